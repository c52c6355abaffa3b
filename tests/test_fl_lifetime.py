"""pathfl.fl.flower.lifetime on real processes (a few seconds in all): exit codes of an interrupted
command, children that die with their parent even when it is SIGKILLed, a second Ctrl-C
that cuts a slow stop short, and Python children that ignore a ``./pathfl`` decoy in the
caller's working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _default_sigint() -> None:
    # A shell without job control starts `cmd &` with SIGINT ignored, and an ignored SIGINT
    # is inherited through exec (Python then installs no KeyboardInterrupt handler). The
    # tests send Ctrl-C themselves, so the child starts as from a terminal, however pytest
    # itself was launched.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _python(code: str, tmp_path: Path) -> subprocess.Popen:
    """``code`` in a fresh interpreter (own session, default SIGINT); it prints READY
    <pid...> when set up."""
    return subprocess.Popen(
        [sys.executable, "-P", "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def _ready(proc: subprocess.Popen) -> list[int]:
    line = proc.stdout.readline()
    assert line.startswith("READY"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return [int(x) for x in line.split()[1:]]


def _gone(pid: int, within_s: float) -> float | None:
    """Seconds until ``pid`` no longer runs (zombies count as gone), None if it still does."""
    from pathfl.fl.flower.lifetime import _start_time, still_running

    t0, start = time.monotonic(), _start_time(pid)
    while time.monotonic() - t0 < within_s:
        if start is None or not still_running([(pid, start)]):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


STOP_ON_SIGNALS = """
    import sys, time
    from pathfl.fl.flower.lifetime import stop_on_signals
    with stop_on_signals(service={service}):
        try:
            print("READY", flush=True)
            time.sleep(60)
        finally:
            print("cleaned up", flush=True)
"""


@pytest.mark.parametrize(
    ("sig", "service", "code"),
    [
        (signal.SIGTERM, False, 143),
        (signal.SIGINT, False, 130),
        (signal.SIGTERM, True, 0),
        (signal.SIGINT, True, 0),
    ],
)
def test_stop_on_signals_runs_cleanup_and_sets_exit_code(tmp_path, sig, service, code) -> None:
    proc = _python(STOP_ON_SIGNALS.format(service=service), tmp_path)
    _ready(proc)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert "cleaned up" in out  # SIGTERM unwinds like Ctrl-C: `finally` blocks run


def test_children_die_with_a_sigkilled_parent(tmp_path) -> None:
    """A parent starts (1) a plain program with the parent-death signal and (2) a Python child
    that watches its parent; SIGKILL of the parent ends both within seconds."""
    proc = _python(
        """
        import os, subprocess, sys
        from pathfl.fl.flower import lifetime
        env = lifetime.child_env(dict(os.environ))
        plain = subprocess.Popen(["sleep", "60"], preexec_fn=lifetime.die_with_parent())
        watched = subprocess.Popen(
            [sys.executable, "-P", "-c",
             "import time; from pathfl.fl.flower.lifetime import watch_parent; "
             "watch_parent(interval_s=0.1); print('watching', flush=True); time.sleep(60)"],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        assert watched.stdout.readline().startswith("watching")
        print("READY", plain.pid, watched.pid, flush=True)
        plain.wait()
        """,
        tmp_path,
    )
    plain, watched = _ready(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    try:
        assert _gone(plain, 5.0) is not None, "the parent-death signal did not end `sleep`"
        assert _gone(watched, 5.0) is not None, "the watching child did not notice"
    finally:
        for pid in (plain, watched):
            if _gone(pid, 0.1) is None:
                os.kill(pid, signal.SIGKILL)


def test_second_ctrl_c_kills_at_once(tmp_path) -> None:
    """stop_all waits up to its timeout for a process that ignores SIGTERM; a second Ctrl-C
    during that wait SIGKILLs it at once instead of breaking off the clean-up."""
    proc = _python(
        f"""
        import time
        from pathlib import Path
        from pathfl.fl.flower.processes import start_process, stop_all
        p = start_process("stubborn", ["bash", "-c", "trap '' TERM; sleep 60 & wait"],
                          log_path=Path({str(tmp_path / "stubborn.log")!r}), env={{}})
        time.sleep(0.5)  # bash has set its trap
        print("READY", p.pid, flush=True)
        t0 = time.monotonic()
        stop_all([p], timeout_s=60)
        print(f"stopped {{time.monotonic() - t0:.2f}}", flush=True)
        """,
        tmp_path,
    )
    (child,) = _ready(proc)
    time.sleep(1.0)  # stop_all is waiting for the stubborn process
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert float(out.split("stopped")[1]) < 5.0, out
    assert _gone(child, 2.0) is not None


def test_python_children_ignore_a_decoy_pathfl_in_cwd(tmp_path, monkeypatch) -> None:
    """`pathfl demo` runs its stages as `python -m pathfl ...`: from a folder holding a
    ``./pathfl`` package (the parent folder of a clone) they still import the real pathfl."""
    from pathfl import __version__
    from pathfl.demo.pipeline import run_cli

    decoy = tmp_path / "pathfl"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('decoy pathfl imported')\n")
    (decoy / "pyproject.toml").write_text('[project]\nname = "decoy"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    log = tmp_path / "logs" / "version.log"
    assert run_cli(["--version"], log_path=log, label="version") == 0, log.read_text()
    assert f"pathfl {__version__}" in log.read_text()
    assert "decoy pathfl imported" not in log.read_text()
