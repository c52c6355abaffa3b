"""A whole federation on one machine as real processes on 127.0.0.1 (SuperLink + one SuperNode
per site, TLS and site authentication by default), and following a submitted run to its end.
Used by ``pathfl fl simulate``, the end-to-end tests and the benchmark. Everything started is
stopped by PID (process group) on exit, also on errors and Ctrl-C."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathfl.fl.flower import flower_cli, lifetime
from pathfl.fl.flower import processes as procs
from pathfl.fl.round_watch import RoundWatcher
from pathfl.fl.rundir import RunDir
from pathfl.fl.site import SiteSpec

logger = logging.getLogger(__name__)


def site_node_config(spec: SiteSpec, site_dir: Path) -> dict[str, str]:
    """The node config of ``spec``'s SuperNode: site name, data, its audit log in
    ``site_dir``, its policy (also what the in-process transport gives the site)."""
    cfg = {
        "site": spec.name,
        "features": str(Path(spec.features).resolve()),
        "clinical": str(Path(spec.clinical).resolve()),
        "audit-log": str((site_dir / "audit.jsonl").resolve()),
    }
    if spec.policy is not None:
        cfg["policy"] = str(Path(spec.policy).resolve())
    return cfg


@dataclass
class LocalFederation:
    work: Path
    tls: bool = True
    auth: bool = True
    host: str = "127.0.0.1"
    superlink: procs.ManagedProcess | None = None
    sites: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    port: int = 0
    env_extra: dict[str, str] = field(default_factory=dict)
    fast_poll: bool = True  # SuperNodes via pathfl.fl.flower.fast_supernode (0.5 s idle poll)
    use_worker: bool = True  # a long-running pathfl.fl.flower.worker per site
    workers: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    submitted: tuple[Path, int] | None = None  # (run dir, Flower run id) of the last submit

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def certs(self) -> Path | None:
        return self.work / "certs" if self.tls else None

    @property
    def home(self) -> Path:
        return self.work / "flwr_home"

    def site_dir(self, name: str) -> Path:
        return self.work / "sites" / name

    # ---------------------------------------------------------------- start/stop
    def start(self, specs: list[SiteSpec], *, timeout_s: float = 180.0) -> LocalFederation:
        """SuperLink, then every site: workers launched first (they import torch), site keys
        registered meanwhile, SuperNodes started once their worker listens."""
        from concurrent.futures import ThreadPoolExecutor

        from pathfl.fl.trust.certs import make_certs, make_site_keys

        try:
            if self.tls:
                make_certs(
                    self.work / "certs",
                    sites=[s.name for s in specs],
                    hosts=[self.host, "localhost"],
                )
            self.port = procs.free_port(self.host)
            self.superlink = procs.start_process(
                "superlink",
                procs.superlink_argv(
                    host=self.host,
                    port=self.port,
                    certs=self.certs,
                    database=self.work / "superlink_state.db",
                    auth=self.auth,
                ),
                log_path=self.work / "logs" / "superlink.log",
                env=procs.flower_env(self.home, **self.env_extra),
            )
            socks: dict[str, str] = {}
            if self.use_worker:
                for spec in specs:
                    self.workers[spec.name], socks[spec.name] = procs.launch_worker(
                        f"site-{spec.name}-worker",
                        self.site_dir(spec.name),
                        env=procs.flower_env(None, **self.env_extra),
                    )
            procs.wait_port(self.host, self.port, timeout_s=timeout_s, proc=self.superlink)
            flower_cli.write_flwr_home(
                self.home,
                server=self.server,
                root_cert=self.certs / "ca.crt" if self.certs else None,
            )
            if self.auth:
                pubs = [make_site_keys(self.certs, s.name)[1] for s in specs]  # type: ignore[arg-type]
                with ThreadPoolExecutor(max_workers=4) as pool:
                    list(
                        pool.map(
                            lambda sp: flower_cli.register_site(self.home, sp[0], sp[1].name),
                            zip(pubs, specs, strict=True),
                        )
                    )
            for spec in specs:
                if spec.name in socks:
                    procs.wait_worker(self.workers[spec.name], socks[spec.name])
                self.start_site(spec, register=False, worker_socket=socks.get(spec.name))
        except BaseException:
            self.stop()
            raise
        return self

    def start_site(
        self,
        spec: SiteSpec,
        *,
        register: bool = True,
        key: Path | None = None,
        worker_socket: str | None = None,
    ) -> procs.ManagedProcess:
        """Start (and, with auth and ``register``, first register) one SuperNode for
        ``spec``. ``key`` overrides the site's key (tests use an unregistered key)."""
        from pathfl.fl.trust.certs import make_site_keys

        key_path = key
        if self.auth and key_path is None:
            key_path, pub = make_site_keys(self.certs, spec.name)  # type: ignore[arg-type]
            if register:
                flower_cli.register_site(self.home, pub, spec.name)
        sdir = self.site_dir(spec.name)
        node_config = site_node_config(spec, sdir)
        if worker_socket:
            node_config["worker"] = worker_socket
        proc = procs.start_process(
            f"site-{spec.name}",
            procs.supernode_argv(
                server=self.server,
                root_cert=self.certs / "ca.crt" if self.certs else None,
                key=key_path if self.auth else None,
                node_config=node_config,
                runtime_port=procs.free_port(self.host),
                fast_poll=self.fast_poll,
            ),
            log_path=sdir / "supernode.log",
            env=procs.flower_env(sdir / "flwr_home", **self.env_extra),
        )
        self.sites[spec.name] = proc
        return proc

    def stop(self) -> None:
        """Stop every process this federation started, all at once (a second Ctrl-C or
        SIGTERM meanwhile kills them at once)."""
        superlink = [self.superlink] if self.superlink is not None else []
        procs.stop_all([*self.sites.values(), *self.workers.values(), *superlink])

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop()
        if self.submitted and exc_type is not None and issubclass(exc_type, lifetime.STOP_REQUESTS):
            mark_interrupted(*self.submitted)  # now that no ServerApp can overwrite it

    # ---------------------------------------------------------------- runs
    def submit(self, cfg: dict[str, Any], out_dir: Path, *, resume: bool = False) -> int:
        app = flower_cli.write_app(self.work / "app")
        out_dir = Path(out_dir).resolve()
        run_id = flower_cli.submit_run(self.home, app, cfg=cfg, out_dir=out_dir, resume=resume)
        self.submitted = (out_dir, run_id)
        return run_id


def follow_run(
    home: Path,
    run_id: int,
    run_dir: Path | None,
    *,
    timeout_s: float,
    superlink_log: Path | None = None,
    poll_s: float = 0.5,
    flower_poll_s: float = 10.0,
    stop_on_interrupt: bool = True,
    on_round: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Wait until the run ended — the run dir's status.json says completed/failed (when the
    run dir is on this host) or Flower reports ``finished:*`` — or ``timeout_s`` passed.
    Flower's status costs a ``flwr ls`` process, so it is asked only every ``flower_poll_s``.
    On timeout the run is stopped, never left hanging; on Ctrl-C/SIGTERM too (unless
    ``stop_on_interrupt`` is False: the caller stops the SuperLink itself), and status.json
    then says ``interrupted`` (the checkpoint stays: ``pathfl fl run --resume``).
    ``on_round``: called with a :class:`pathfl.fl.round_watch.RoundInfo` per finished round
    (needs the run dir on this host)."""
    watch = RoundWatcher(run_dir, on_round) if on_round and run_dir is not None else None
    try:
        return _follow(
            home,
            run_id,
            run_dir,
            timeout_s=timeout_s,
            superlink_log=superlink_log,
            poll_s=poll_s,
            flower_poll_s=flower_poll_s,
            watch=watch,
        )
    except lifetime.STOP_REQUESTS:  # Ctrl-C, lifetime.Terminated, interrupts.Interrupted
        if stop_on_interrupt:  # a second Ctrl-C cuts this short
            logger.warning("run %d interrupted: stopping it", run_id)
            flower_cli.stop_run(home, run_id, timeout_s=15.0)
            mark_interrupted(run_dir, run_id)
        raise


def mark_interrupted(run_dir: Path | None, run_id: int) -> None:
    """status.json of ``run_dir`` says ``interrupted`` when it was the run ``run_id``'s (a
    resumed run dir may hold another run's verdict, and a remote run dir is not here)."""
    rd = RunDir(run_dir) if run_dir is not None else None
    if rd is not None and str(rd.read_status().get("run_id")) == str(run_id):
        rd.write_status("interrupted", run_id=str(run_id))
        logger.warning("run %d interrupted; its last checkpoint is kept in %s", run_id, run_dir)


def _follow(
    home: Path,
    run_id: int,
    run_dir: Path | None,
    *,
    timeout_s: float,
    superlink_log: Path | None,
    poll_s: float,
    flower_poll_s: float,
    watch: RoundWatcher | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status, next_flower, last_log = "", 0.0, time.monotonic()
    local: dict[str, Any] = {}
    while True:
        now = time.monotonic()
        if watch is not None:
            watch.poll()
        if run_dir is not None:
            local = RunDir(run_dir).read_status()
            # only this run's verdict counts (a resumed run dir holds the previous one's)
            mine = str(local.get("run_id")) == str(run_id)
            if mine and local.get("state") in ("completed", "failed"):
                status = status or f"serverapp:{local['state']}"
                break
        if now >= next_flower:
            next_flower = now + flower_poll_s
            status = flower_cli.run_status(home, run_id)
            if status.startswith("finished"):
                if run_dir is not None:  # the ServerApp may have written status.json since
                    local = RunDir(run_dir).read_status()
                break
        if now - last_log > 30:
            last_log = now
            logger.debug("run %d: %s %s", run_id, status, local)
        if now >= deadline:
            flower_cli.stop_run(home, run_id)
            raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s (stopped)")
        time.sleep(poll_s)
    if watch is not None:
        watch.poll()  # the last round(s), written just before the run ended
    result: dict[str, Any] = {"flower_status": status, "run_id": run_id, **local}
    if local.get("state") != "completed" and superlink_log is not None and superlink_log.exists():
        result["log_tail"] = superlink_log.read_text(errors="replace")[-3000:]
    shown = {k: v for k, v in result.items() if k != "log_tail"}
    logger.info("run %d ended: %s", run_id, json.dumps(shown, default=str))
    return result
