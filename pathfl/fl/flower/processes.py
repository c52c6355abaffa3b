"""Starting and stopping Flower's processes for pathfl (SuperLink, SuperNodes, site workers);
talking to a SuperLink through the ``flwr`` CLI is :mod:`pathfl.fl.flower.flower_cli`.

Every process is started in its own session (process group) with its log in a file, in its
log's folder as working directory (never the caller's), and dies with pathfl
(:mod:`pathfl.fl.flower.lifetime`); ``stop`` sends SIGTERM to that group, waits, then SIGKILLs
it, so the helper processes Flower spawns (``flower-superexec``, ``flwr-serverapp``,
``flwr-clientapp``) go too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pathfl.fl.flower import lifetime
from pathfl.fl.flower.lifetime import group_running  # also for callers: tests import it here

logger = logging.getLogger(__name__)

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # flower-superexec checks for new tasks every 1 s by default (documented knob)
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}


class FlowerProcessError(RuntimeError):
    """A Flower process failed to start or a flwr CLI call failed."""


def bin_path(name: str) -> str:
    """A console script of the running interpreter's environment (the venv's flwr)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def flower_env(flwr_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of Flower's processes and pathfl's site processes: telemetry off,
    this environment's scripts first on PATH, this pathfl importable (``PYTHONPATH``)."""
    env = lifetime.python_env({**os.environ, **FLOWER_ENV, **extra})
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    # make sure Flower's subprocesses (superexec, clientapp) come from this environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(
    host: str, port: int, *, timeout_s: float, proc: ManagedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise FlowerProcessError(
                f"{proc.name} exited (code {proc.popen.returncode}); "
                f"see {proc.log_path}:\n{proc.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise FlowerProcessError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL it (idempotent)."""
        stop_all([self], timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the process group and every process below it (Flower's SuperExec has a
        session of its own) at once — also fault injection — and wait until no member of
        the group still runs."""
        below = lifetime.descendants([self.pid])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        lifetime.signal_procs(below, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        deadline = time.monotonic() + 5.0
        while group_running(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def start_process(
    name: str, argv: list[str], *, log_path: Path, env: dict[str, str]
) -> ManagedProcess:
    """Start ``argv`` in its own session, output to ``log_path``, working directory the log's
    folder; it gets SIGTERM when this process dies (Linux) and may watch this process
    (``PATHFL_PARENT_PID``). Paths in ``argv`` must be absolute."""
    log_path = Path(log_path).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=lifetime.child_env(env),
            cwd=log_path.parent,
            start_new_session=True,
            preexec_fn=lifetime.die_with_parent(),  # only prctl: see lifetime
        )
    finally:
        log.close()
    logger.info("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return ManagedProcess(name, popen, log_path, argv)


def superlink_argv(
    *, host: str, port: int, certs: Path | None, database: Path | None, auth: bool
) -> list[str]:
    argv = [
        bin_path("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if certs is None:
        argv.append("--insecure")
    else:
        certs = Path(certs).resolve()
        argv += [
            "--ssl-certfile",
            str(certs / "server.crt"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
        ]
    if auth:
        if certs is None:
            raise ValueError("site authentication needs TLS (give --certs, drop --insecure)")
        argv.append("--enable-supernode-auth")
    if database is not None:
        argv += ["--database", str(Path(database).resolve())]
    return argv


def node_config_arg(values: dict[str, str]) -> str:
    """Flower's ``--node-config`` string: space-separated ``key="value"`` (TOML strings)."""
    return " ".join(f"{k}={json.dumps(str(v))}" for k, v in values.items())


def supernode_argv(
    *,
    server: str,
    root_cert: Path | None,
    key: Path | None,
    node_config: dict[str, str],
    runtime_port: int,
    fast_poll: bool = True,
) -> list[str]:
    """``fast_poll``: run the SuperNode through :mod:`pathfl.fl.flower.fast_supernode` (idle poll
    0.5 s instead of Flower's fixed 3 s)."""
    start = (
        lifetime.python_module_argv("pathfl.fl.flower.fast_supernode")
        if fast_poll
        else [bin_path("flower-supernode")]
    )
    argv = [
        *start,
        "--superlink",
        server,
        "--port",
        str(runtime_port),
        "--node-config",
        node_config_arg(node_config),
    ]
    if root_cert is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(Path(root_cert).resolve())]
    if key is not None:
        argv += ["--auth-supernode-private-key", str(Path(key).resolve())]
    return argv


def launch_worker(name: str, state_dir: Path, *, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    """Start a site's long-running worker (:mod:`pathfl.fl.flower.worker`) without waiting; returns
    the process and its socket path (the node config's ``worker``)."""
    from pathfl.fl.flower.worker import socket_path_for

    sock = socket_path_for(state_dir)
    Path(sock).unlink(missing_ok=True)
    # one site = one training process; torch's default of one thread per core only adds
    # contention when several sites (or other jobs) share the machine
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    proc = start_process(
        name,
        lifetime.python_module_argv("pathfl.fl.flower.worker", sock),
        log_path=Path(state_dir) / "worker.log",
        env=env,
    )
    return proc, sock


def wait_worker(proc: ManagedProcess, sock: str, *, timeout_s: float = 180.0) -> None:
    from pathfl.fl.flower.worker import key_path

    deadline = time.monotonic() + timeout_s
    try:
        while not (Path(sock).exists() and key_path(sock).exists()):
            if not proc.alive():
                raise FlowerProcessError(f"{proc.name} exited: {proc.log_tail()}")
            if time.monotonic() > deadline:
                raise FlowerProcessError(f"{proc.name} did not start within {timeout_s:.0f} s")
            time.sleep(0.2)
    except BaseException:  # also Ctrl-C/SIGTERM while torch loads
        proc.stop()
        raise


def start_worker(
    name: str, state_dir: Path, *, env: dict[str, str], timeout_s: float = 180.0
) -> tuple[ManagedProcess, str]:
    """:func:`launch_worker` and wait until it listens."""
    proc, sock = launch_worker(name, state_dir, env=env)
    wait_worker(proc, sock, timeout_s=timeout_s)
    return proc, sock


def stop_all(
    processes: list[ManagedProcess], *, timeout_s: float = 10.0, helpers_s: float = 3.0
) -> None:
    """Stop ``processes`` and every process they started, within ``timeout_s`` in total
    (all at once: one by one would cost up to ``timeout_s`` each). Flower's helpers
    (``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``; some in sessions of their
    own) get SIGTERM first and up to ``helpers_s`` to report their end while the SuperLink and
    SuperNodes still listen; then every process group gets SIGTERM; whatever still runs at
    the deadline is SIGKILLed. A second Ctrl-C or SIGTERM meanwhile SIGKILLs all at once."""
    leaders = [p.pid for p in processes]
    helpers = lifetime.descendants(leaders)

    def kill_now() -> None:
        lifetime.kill_groups(leaders)
        lifetime.signal_procs(helpers | lifetime.descendants(leaders), signal.SIGKILL)

    start = time.monotonic()
    deadline = start + timeout_s
    with lifetime.second_signal_kills(kill_now):
        lifetime.signal_procs(helpers, signal.SIGTERM)
        lifetime.wait_gone(helpers, deadline=min(deadline, start + helpers_s))
        lifetime.kill_groups(leaders, signal.SIGTERM)
        for p in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        lifetime.wait_gone(helpers, deadline=deadline)
        kill_now()
        for p in processes:
            p.kill()
    logger.debug("stopped %s in %.1f s", [p.name for p in processes], time.monotonic() - start)
