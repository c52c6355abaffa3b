"""A whole federation on one machine as real processes on 127.0.0.1 (SuperLink + one SuperNode
per site, TLS and site authentication by default), and following a submitted run to its end.
Used by ``pathfl fl simulate``, the end-to-end tests and the benchmark. Everything started is
stopped by PID (process group) on exit, also on errors and Ctrl-C."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathfl.fl import processes as procs
from pathfl.fl.rundir import RunDir

logger = logging.getLogger(__name__)


@dataclass
class SiteSpec:
    name: str
    features: Path
    clinical: Path
    policy: Path | None = None


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
    def start(self, specs: list[SiteSpec], *, timeout_s: float = 120.0) -> LocalFederation:
        from pathfl.fl.certs import make_certs

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
            procs.wait_port(self.host, self.port, timeout_s=timeout_s, proc=self.superlink)
            procs.write_flwr_home(
                self.home,
                server=self.server,
                root_cert=self.certs / "ca.crt" if self.certs else None,
            )
            for spec in specs:
                self.start_site(spec, register=self.auth)
        except BaseException:
            self.stop()
            raise
        return self

    def start_site(
        self, spec: SiteSpec, *, register: bool = True, key: Path | None = None
    ) -> procs.ManagedProcess:
        """Start (and, with auth, first register) one SuperNode for ``spec``. ``key``
        overrides the site's key (tests use an unregistered key)."""
        from pathfl.fl.certs import make_site_keys

        key_path = key
        if self.auth and key_path is None:
            key_path, pub = make_site_keys(self.certs, spec.name)  # type: ignore[arg-type]
            if register:
                procs.register_site(self.home, pub, spec.name)
        sdir = self.site_dir(spec.name)
        node_config = {
            "site": spec.name,
            "features": str(Path(spec.features).resolve()),
            "clinical": str(Path(spec.clinical).resolve()),
            "audit-log": str((sdir / "audit.jsonl").resolve()),
        }
        if spec.policy is not None:
            node_config["policy"] = str(Path(spec.policy).resolve())
        proc = procs.start_process(
            f"site-{spec.name}",
            procs.supernode_argv(
                server=self.server,
                root_cert=self.certs / "ca.crt" if self.certs else None,
                key=key_path if self.auth else None,
                node_config=node_config,
                runtime_port=procs.free_port(self.host),
            ),
            log_path=sdir / "supernode.log",
            env=procs.flower_env(sdir / "flwr_home", **self.env_extra),
        )
        self.sites[spec.name] = proc
        return proc

    def stop(self) -> None:
        for proc in list(self.sites.values()):
            proc.stop()
        if self.superlink is not None:
            self.superlink.stop()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- runs
    def submit(self, cfg: dict[str, Any], out_dir: Path, *, resume: bool = False) -> int:
        app = procs.write_app(self.work / "app")
        return procs.submit_run(
            self.home, app, cfg=cfg, out_dir=Path(out_dir).resolve(), resume=resume
        )


def follow_run(
    home: Path,
    run_id: int,
    run_dir: Path | None,
    *,
    timeout_s: float,
    superlink_log: Path | None = None,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Wait until the run finished (Flower status ``finished:*``) or ``timeout_s`` passed; then
    return the run dir's status.json (when the run dir is on this host) with Flower's status.
    On timeout the run is stopped, never left hanging."""
    deadline = time.monotonic() + timeout_s
    status, last_log = "", 0.0
    while time.monotonic() < deadline:
        status = procs.run_status(home, run_id)
        if status.startswith("finished"):
            break
        if run_dir is not None and time.monotonic() - last_log > 15:
            last_log = time.monotonic()
            logger.info("run %d: %s %s", run_id, status, RunDir(run_dir).read_status())
        time.sleep(poll_s)
    else:
        procs.stop_run(home, run_id)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s (stopped it)")
    result: dict[str, Any] = {"flower_status": status, "run_id": run_id}
    if run_dir is not None:
        result.update(RunDir(run_dir).read_status())
    if status != "finished:completed" and superlink_log is not None and superlink_log.exists():
        result["log_tail"] = superlink_log.read_text(errors="replace")[-3000:]
    logger.info(
        "run %d ended: %s", run_id, json.dumps({k: v for k, v in result.items() if k != "log_tail"})
    )
    return result
