"""`pathfl fl` commands: certs, server, site, run, simulate (+ audit, from the trust stage).
They wrap Flower's (1.42) processes so users never write Flower configuration by hand."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from pathfl.cli.options import CommandGroup, listing_command, registry_names, split_list
from pathfl.fl.flower.lifetime import STOP_REQUESTS, stop_on_signals

logger = logging.getLogger(__name__)

fl_app = typer.Typer(
    name="fl",
    cls=CommandGroup,
    help="Federated training across sites (Flower): certs, server, site, run, simulate, audit.",
    no_args_is_help=True,
)

_TUNING = {
    "rounds": "Federated rounds.",
    "local_epochs": "Local epochs per round.",
    "proximal_mu": "FedProx mu (0 = FedAvg).",
    "aggregation": "Server aggregation: {choices} (fedavg is weighted by patients).",
    "min_sites": "Fewest replies a round may aggregate.",
    "round_timeout_s": "Per-round deadline in seconds.",
}


def _load_user_config(config: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    from pathfl.config import merge_config
    from pathfl.fl.fl_config import valid_keys

    given = {k: v for k, v in overrides.items() if v is not None}
    return merge_config(config, given=given, valid=valid_keys())


_AGGREGATIONS = listing_command(
    {"aggregation": registry_names("pathfl.fl.aggregate", "list_aggregators")}
)


def _round_lines() -> Any:
    """The progress callback of a federated run: one line per round on stderr (rounds,
    sites answered, round time, federated C); None with ``-q``."""
    from pathfl.cli.verbosity import CURRENT

    if CURRENT.quiet:
        return None
    return lambda info: typer.echo(info.line(), err=True)


def _foreground(proc: Any) -> None:
    """Wait for a started Flower process; Ctrl-C or SIGTERM (raised as KeyboardInterrupt by
    ``stop_on_signals``) stops it (and its process group)."""
    try:
        code = proc.popen.wait()
        if code != 0:
            typer.secho(f"{proc.name} exited with code {code}; log: {proc.log_path}", err=True)
            typer.echo(proc.log_tail(), err=True)
            raise typer.Exit(1)
    except STOP_REQUESTS:
        typer.echo(f"stopping {proc.name} (pid {proc.pid})")
    finally:
        proc.stop()


@fl_app.command("certs")
def certs_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the CA, server cert and site keys."),
    sites: str = typer.Option(..., "--sites", help="Comma-separated site names."),
    hosts: str = typer.Option(
        "localhost", "--hosts", help="Comma-separated DNS names/IPs of the aggregator (SANs)."
    ),
    days: int = typer.Option(365, "--days", help="Validity of the certificates."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing material."),
) -> None:
    """Create a CA, the aggregator's TLS certificate and one auth key pair per site."""
    from pathfl.config import ConfigError
    from pathfl.fl.trust.certs import make_certs

    host_list = list(dict.fromkeys([*split_list(hosts), "127.0.0.1", "localhost"]))
    try:
        paths = make_certs(
            out, sites=split_list(sites), hosts=host_list, days=days, overwrite=overwrite
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    typer.echo(f"CA: {paths.ca_cert} (share)  CA key: {paths.ca_key} (keep offline)")
    typer.echo(f"server: {paths.server_cert} {paths.server_key} (SANs: {', '.join(host_list)})")
    for s in split_list(sites):
        typer.echo(
            f"site {s}: give {paths.site_key(s)} to the site; {paths.site_pub(s)} registers it"
        )


@fl_app.command("server")
@stop_on_signals(service=True)
def server_cmd(
    certs: Path = typer.Option(None, "--certs", help="Folder from `pathfl fl certs`."),
    host: str = typer.Option("0.0.0.0", "--host", help="Interface to listen on."),
    port: int = typer.Option(9093, "--port", help="Port of the SuperLink (Fleet + Control API)."),
    state_dir: Path = typer.Option(
        Path("pathfl-server"), "--state-dir", help="SuperLink state database, logs, Flower home."
    ),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no site auth (testing)."),
) -> None:
    """Run the aggregator's SuperLink (TLS, site authentication, state database) and register
    every site key found in CERTS/sites/*.pub."""
    from pathfl.config import ConfigError
    from pathfl.fl.flower import flower_cli
    from pathfl.fl.flower import processes as procs

    if not insecure and (certs is None or not (certs / "server.crt").is_file()):
        raise ConfigError("--certs DIR (from `pathfl fl certs`) is required unless --insecure")
    state_dir.mkdir(parents=True, exist_ok=True)
    home = state_dir / "flwr_home"
    proc = procs.start_process(
        "superlink",
        procs.superlink_argv(
            host=host,
            port=port,
            certs=None if insecure else certs,
            database=state_dir / "superlink_state.db",
            auth=not insecure,
        ),
        log_path=state_dir / "superlink.log",
        env=procs.flower_env(home),
    )
    local = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else f"{host}:{port}"
    try:
        procs.wait_port(local.rsplit(":", 1)[0], port, timeout_s=120, proc=proc)
        flower_cli.write_flwr_home(
            home, server=local, root_cert=None if insecure else certs / "ca.crt"
        )
        if not insecure:
            for pub in sorted((certs / "sites").glob("*.pub")):
                try:
                    node = flower_cli.register_site(home, pub, pub.stem)
                    state = "already registered" if node is None else f"node {node}"
                    typer.echo(f"registered site {pub.stem} ({state})")
                except procs.FlowerProcessError as e:
                    typer.secho(f"site {pub.stem} not registered (already?): {e}", err=True)
    except BaseException:
        proc.stop()
        raise
    typer.echo(f"SuperLink listening on {host}:{port} (pid {proc.pid}); log {proc.log_path}")
    _foreground(proc)


@fl_app.command("site")
@stop_on_signals(service=True)
def site_cmd(
    features: Path = typer.Option(..., "--features", help="This site's features folder."),
    clinical: Path = typer.Option(..., "--clinical", help="This site's clinical CSV."),
    server: str = typer.Option(..., "--server", help="Aggregator HOST:PORT."),
    name: str = typer.Option(..., "--name", help="Site name (as in `pathfl fl certs --sites`)."),
    key: Path = typer.Option(None, "--key", help="This site's private key (CERTS/sites/NAME.key)."),
    root_cert: Path = typer.Option(None, "--root-cert", help="The federation's ca.crt."),
    policy: Path = typer.Option(None, "--policy", help="Site policy YAML (what this site allows)."),
    audit_log: Path = typer.Option(None, "--audit-log", help="Site audit log (JSONL)."),
    state_dir: Path = typer.Option(Path("pathfl-site"), "--state-dir", help="Logs, Flower home."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no auth (testing only)."),
    flower_poll: bool = typer.Option(
        False,
        "--flower-poll",
        help="Keep Flower's 3 s idle poll (no pathfl.fl.flower.fast_supernode).",
    ),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="No long-running worker: each message loads torch + data."
    ),
) -> None:
    """Run this site's SuperNode: connects out to the aggregator and trains on local data."""
    from pathfl.config import ConfigError
    from pathfl.fl.flower import processes as procs
    from pathfl.fl.trust.certs import validate_site_name

    validate_site_name(name)
    needed = [features, clinical] + ([] if insecure else [key, root_cert])
    for p in needed:
        if p is None or not Path(p).exists():
            raise ConfigError(
                f"{p}: not found (--key and --root-cert are needed unless --insecure)"
            )
    node_config = {
        "site": name,
        "features": str(features.resolve()),
        "clinical": str(clinical.resolve()),
        "audit-log": str((audit_log or state_dir / "audit.jsonl").resolve()),
    }
    if policy is not None:
        node_config["policy"] = str(policy.resolve())
    worker = None
    if not no_worker:
        worker, node_config["worker"] = procs.start_worker(
            f"site-{name}-worker", state_dir, env=procs.flower_env(None)
        )
    proc = procs.start_process(
        f"site-{name}",
        procs.supernode_argv(
            server=server,
            root_cert=None if insecure else root_cert,
            key=None if insecure else key,
            node_config=node_config,
            runtime_port=procs.free_port(),
            fast_poll=not flower_poll,
        ),
        log_path=state_dir / "supernode.log",
        env=procs.flower_env(state_dir / "flwr_home"),
    )
    typer.echo(f"site {name} connecting to {server} (pid {proc.pid}); log {proc.log_path}")
    try:
        _foreground(proc)
    finally:
        if worker is not None:
            worker.stop()


@fl_app.command("run", cls=_AGGREGATIONS)
@stop_on_signals()
def run_cmd(
    server: str = typer.Option(None, "--server", help="Aggregator HOST:PORT."),
    root_cert: Path = typer.Option(None, "--root-cert", help="The federation's ca.crt."),
    config: Path = typer.Option(None, "--config", help="Federated run config YAML."),
    out: Path = typer.Option(None, "--out", help="Run dir (on the aggregator host)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this run dir."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS (testing only)."),
    timeout_s: float = typer.Option(0, "--timeout", help="Give up after this many seconds."),
    rounds: int = typer.Option(None, "--rounds", help=_TUNING["rounds"]),
    local_epochs: int = typer.Option(None, "--local-epochs", help=_TUNING["local_epochs"]),
    proximal_mu: float = typer.Option(None, "--proximal-mu", help=_TUNING["proximal_mu"]),
    aggregation: str = typer.Option(None, "--aggregation", help=_TUNING["aggregation"]),
    min_sites: int = typer.Option(None, "--min-sites", help=_TUNING["min_sites"]),
    round_timeout_s: float = typer.Option(None, "--round-timeout", help=_TUNING["round_timeout_s"]),
) -> None:
    """Submit a federated run to the SuperLink and follow it to the end."""
    import tempfile

    from pathfl.config import ConfigError
    from pathfl.fl.fl_config import effective_config, run_timeout_s
    from pathfl.fl.flower import flower_cli
    from pathfl.fl.flower.federation import follow_run
    from pathfl.fl.rundir import Submission, resume_submission

    if resume is not None:
        run = resume_submission(resume, server=server, root_cert=root_cert, insecure=insecure)
        out = resume
    else:
        if out is None:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        overrides = {
            "rounds": rounds,
            "local_epochs": local_epochs,
            "proximal_mu": proximal_mu,
            "aggregation": aggregation,
            "min_sites": min_sites,
            "round_timeout_s": round_timeout_s,
        }
        cfg = effective_config(_load_user_config(config, overrides))
        run = Submission(cfg, server=server, root_cert=root_cert, insecure=insecure)
    run.check()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run.save(out)
    with tempfile.TemporaryDirectory(prefix="pathfl-fl-") as tmp:
        home = flower_cli.write_flwr_home(
            Path(tmp) / "home", server=run.server, root_cert=None if run.insecure else run.root_cert
        )
        app = flower_cli.write_app(Path(tmp) / "app")
        run_id = flower_cli.submit_run(
            home, app, cfg=run.config, out_dir=out, resume=resume is not None
        )
        typer.echo(f"submitted run {run_id}; run dir {out}")
        budget = timeout_s or run_timeout_s(run.config)
        result = follow_run(home, run_id, out, timeout_s=budget, on_round=_round_lines())
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=2))
    from pathfl.fl.report import write_run_report

    if (report := write_run_report(out)) is not None:
        typer.echo(f"report: {report}")
    if result.get("state") != "completed":
        raise typer.Exit(1)


@fl_app.command("simulate", cls=_AGGREGATIONS)
@stop_on_signals()
def simulate_cmd(
    site: list[Path] = typer.Option(
        ..., "--site", help="Site folder (features/ + clinical.csv); repeat."
    ),
    out: Path = typer.Option(..., "--out", help="Run dir for the federated model + comparison."),
    config: Path = typer.Option(None, "--config", help="Federated run config YAML."),
    policy: Path = typer.Option(None, "--policy", help="Site policy YAML applied to every site."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS/auth between the processes."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip local-only/pooled."),
    rounds: int = typer.Option(None, "--rounds", help=_TUNING["rounds"]),
    local_epochs: int = typer.Option(None, "--local-epochs", help=_TUNING["local_epochs"]),
    proximal_mu: float = typer.Option(None, "--proximal-mu", help=_TUNING["proximal_mu"]),
    aggregation: str = typer.Option(None, "--aggregation", help=_TUNING["aggregation"]),
    leave_one_site_out: bool = typer.Option(
        False,
        "--leave-one-site-out",
        help="Federate k times over k-1 sites; score federated, pooled, local-only on the "
        "held-out site (OUT/unseen_site.md).",
    ),
    personalise: str = typer.Option(
        None, "--personalise", help="head | norm: each site adapts the global model locally."
    ),
) -> None:
    """One machine, one process per site on 127.0.0.1: federated run + baselines + table."""
    from pathfl.fl.flower.simulate import FederatedRunError, simulate, site_specs
    from pathfl.survival.personalise import check_part

    tuning = {"rounds": rounds, "local_epochs": local_epochs, "proximal_mu": proximal_mu}
    user = _load_user_config(config, {**tuning, "aggregation": aggregation})
    specs, kw = site_specs(site, policy=policy), {"tls": not insecure, "personalise": personalise}
    check_part(personalise)
    if (on_round := _round_lines()) is not None:
        typer.echo(f"starting {len(specs)} sites on 127.0.0.1 (one process each)...", err=True)
    try:
        if leave_one_site_out:
            from pathfl.fl.flower.loso import leave_one_site_out as loso

            typer.echo(loso(specs, user, out, **kw)["table"])
            return
        summary = simulate(specs, user, out, baselines=not no_baselines, on_round=on_round, **kw)
    except (FederatedRunError, TimeoutError) as e:  # data/config problems exit 2 via main()
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(1) from None
    typer.echo(f"federated run dir: {summary['run_dir']}")
    typer.echo(f"federated C-index (within-site pairs): {_federated_c_text(summary)}")
    for key in ("table", "personalised_table"):
        if key in summary:
            typer.echo(summary[key])
    if summary.get("report"):
        typer.echo(f"report: {summary['report']}")


def _federated_c_text(summary: dict) -> str:
    """The final federated C with its basis (patients, events, pairs) from metrics.json."""
    from pathfl.fl.baselines import FED_NO_CI, federated_entry
    from pathfl.survival.metrics import format_c_index

    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    total = federated_entry(metrics.get("final_per_site", {}))["total"]
    return format_c_index(total, no_ci=FED_NO_CI)


def register(app: typer.Typer) -> None:
    """Add `pathfl fl ...` to the root app."""
    from pathfl.cli.audit import register_audit
    from pathfl.cli.fl_personalise import register_personalise

    register_audit(fl_app)
    register_personalise(fl_app)
    app.add_typer(fl_app, name="fl")
