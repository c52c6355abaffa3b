"""Stopping `pathfl fl simulate` mid-run as a terminal (Ctrl-C = SIGINT to the process group),
a scheduler (SIGTERM) or the OOM killer (SIGKILL of pathfl alone) would: every process the
command started — SuperLink, its SuperExec and ServerApp, the SuperNodes, their SuperExecs
and ClientApps, the site workers — is gone within seconds, and the exit code says why.
Also: children never depend on the caller's working directory (a decoy ``./pathfl`` package
with a ``pyproject.toml``, as in the parent folder of a clone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pathfl.fl.flower.lifetime import ENV_PARENT_PID, descendants, still_running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# enough rounds that the run is still going when the signal comes
RUN_CONFIG = """\
rounds: 50
local_epochs: 1
model: meanpool
loss: cox
hidden_dim: 8
val_folds: 2
round_timeout_s: 60
connect_timeout_s: 60
seed: 2
"""
STOP_LIMIT_S = 15.0  # "within seconds" on a loaded 2-core machine (measured: 5-8 s)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory) -> list[Path]:
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    root = tmp_path_factory.mktemp("fl_int_sites")
    cohort = make_cohort(
        root / "all", n_patients=30, feature_dim=8, tiles=(6, 10), seed=4, two_slide_fraction=0
    )
    return split_into_sites(cohort, root, ["site_a", "site_b"])


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "FLWR_TELEMETRY_ENABLED": "0"}


def _simulate_args(sites: list[Path], out: Path, *, insecure: bool = True) -> list[str]:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(RUN_CONFIG)
    args = ["fl", "simulate", "--out", str(out), "--config", str(config), "--no-baselines"]
    for s in sites:
        args += ["--site", str(s)]
    return args + ["--insecure"] * insecure


def _start_simulate(
    sites: list[Path], out: Path, *, cwd: Path, insecure: bool = True, launcher: list[str] = ()
) -> subprocess.Popen:
    """`pathfl fl simulate` in a session of its own (as a shell job); ``-P``: the test's own
    launch must not import a ``./pathfl`` decoy either. ``launcher``: run it through this
    instead of ``-m pathfl``."""
    args = [sys.executable, "-P", *(launcher or ["-m", "pathfl"])]
    args += _simulate_args(sites, out, insecure=insecure)
    with open(out.parent / f"{out.name}.log", "wb") as log:
        return subprocess.Popen(
            args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")[-4000:]


def _wait_rounds(proc: subprocess.Popen, out: Path, timeout_s: float = 150) -> None:
    """Until round 1 is in rounds.jsonl (so every process of the federation is up)."""
    deadline = time.monotonic() + timeout_s
    while not (out / "rounds.jsonl").is_file():
        assert proc.poll() is None, f"exited {proc.returncode}:\n{_log(out)}"
        assert time.monotonic() < deadline, f"no round after {timeout_s} s:\n{_log(out)}"
        time.sleep(0.2)
    time.sleep(1.0)  # into round 2: ClientApps and the ServerApp are busy


def _tagged(pid: int) -> set[int]:
    """Processes whose environment names ``pid`` as the pathfl command that started them —
    also ones started after a snapshot, or re-parented to init."""
    found = set()
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"{ENV_PARENT_PID}={pid}".encode() in env.read_bytes().split(b"\0"):
                found.add(int(env.parent.name))
        except OSError:
            continue
    return found


def _cmdlines(procs: set[tuple[int, int]]) -> list[str]:
    lines = []
    for pid, _ in procs:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120])
        except OSError:
            continue
    return [line.decode(errors="replace") for line in lines]


def _assert_all_gone(
    before: set[tuple[int, int]], pid: int, *, within_s: float, out: Path
) -> float:
    """Every process of the snapshot (and every process tagged with ``pid``) ends within
    ``within_s``; returns how long that took."""
    t0 = time.monotonic()
    left = still_running(before)
    while (left or _tagged(pid)) and time.monotonic() - t0 < within_s:
        time.sleep(0.2)
        left = still_running(before)
    assert not left, f"still running: {_cmdlines(left)}\n{_log(out)}"
    assert not _tagged(pid), f"processes of pathfl {pid} left: {_tagged(pid)}"
    return time.monotonic() - t0


def _kill_leftovers(procs: set[tuple[int, int]]) -> None:
    for p, _ in still_running(procs):
        os.kill(p, signal.SIGKILL)


def _interrupt_and_check(
    proc: subprocess.Popen, out: Path, sig: int, *, group: bool, expect_rc: int
) -> float:
    snapshot = descendants([proc.pid])
    names = " ".join(_cmdlines(snapshot))
    # the whole federation was running: SuperLink (+ SuperExec, ServerApp), 2 SuperNodes
    # (+ SuperExec each), 2 workers
    for part in ("flower-superlink", "flwr-serverapp", "fast_supernode", "pathfl.fl.flower.worker"):
        assert part in names, (part, names)
    assert len(snapshot) >= 8, names
    try:
        t0 = time.monotonic()
        (os.killpg if group else os.kill)(proc.pid, sig)
        rc = proc.wait(timeout=60)
        exited_s = time.monotonic() - t0
        assert rc == expect_rc, f"exit {rc}:\n{_log(out)}"
        _assert_all_gone(snapshot, proc.pid, within_s=5.0, out=out)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(snapshot)
    assert stopped_s < STOP_LIMIT_S, (exited_s, stopped_s)
    name = signal.Signals(sig).name
    print(f"{name}: exit {rc} after {exited_s:.1f} s, all gone after {stopped_s:.1f} s")
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted", status
    assert (out / "checkpoint" / "state.json").is_file()  # round 1's model is kept
    return stopped_s


def test_sigterm_from_decoy_cwd_stops_everything(two_sites, tmp_path) -> None:
    """SIGTERM to the process group (a scheduler), TLS + site auth, started in a folder whose
    ``./pathfl`` is a decoy package with a pyproject.toml: every child still imports the real
    pathfl and every flwr call still names the connection, so rounds run; then exit 143."""
    cwd = tmp_path / "caller"
    (cwd / "pathfl").mkdir(parents=True)
    (cwd / "pathfl" / "__init__.py").write_text("raise ImportError('decoy pathfl imported')\n")
    (cwd / "pathfl" / "pyproject.toml").write_text('[project]\nname = "decoy"\nversion = "0"\n')
    out = tmp_path / "run"
    proc = _start_simulate(two_sites, out, cwd=cwd, insecure=False)
    _wait_rounds(proc, out)
    _interrupt_and_check(proc, out, signal.SIGTERM, group=True, expect_rc=143)
    assert "decoy pathfl imported" not in _log(out)


def test_ctrl_c_stops_everything(two_sites, tmp_path) -> None:
    """SIGINT to the process group, as a terminal sends on Ctrl-C: exit 130."""
    out = tmp_path / "run"
    proc = _start_simulate(two_sites, out, cwd=tmp_path)
    _wait_rounds(proc, out)
    _interrupt_and_check(proc, out, signal.SIGINT, group=True, expect_rc=130)


def test_children_exit_when_pathfl_is_killed(two_sites, tmp_path) -> None:
    """SIGKILL of pathfl alone (no handler runs): its children notice and exit by themselves
    (parent-death signal, parent watch), so nothing keeps running or keeps ports."""
    out = tmp_path / "run"
    proc = _start_simulate(two_sites, out, cwd=tmp_path)
    _wait_rounds(proc, out)
    snapshot = descendants([proc.pid])
    assert len(snapshot) >= 8, _cmdlines(snapshot)
    try:
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        gone_s = _assert_all_gone(snapshot, proc.pid, within_s=STOP_LIMIT_S, out=out)
    finally:
        _kill_leftovers(snapshot)
    print(f"SIGKILL of pathfl: all children gone after {time.monotonic() - t0:.1f} s")
    assert gone_s < STOP_LIMIT_S


def test_fl_run_sigterm_stops_the_run_and_resume_finishes_it(two_sites, tmp_path) -> None:
    """`pathfl fl run` SIGTERMed after round 1: exit 143, the run is stopped on the SuperLink
    (its ServerApp ends: no headless run), status.json says interrupted; `fl run --resume`
    then continues from the checkpoint to the last round."""
    from pathfl.fl.flower import flower_cli
    from pathfl.fl.flower.federation import LocalFederation
    from pathfl.fl.flower.simulate import site_specs
    from pathfl.fl.rundir import RunDir

    config = tmp_path / "fl.yaml"
    # 3 rounds: stopped after round 1 or 2, the resume has at least one round left to run;
    # no federated linear-cox after the rounds (its own test: test_fl_linear_cox_e2e.py)
    config.write_text(
        RUN_CONFIG.replace("rounds: 50", "rounds: 3") + "num_sites: 2\nlinear_cox: false\n"
    )
    out = tmp_path / "run"
    with LocalFederation(tmp_path / "fed", tls=False, auth=False) as fed:
        fed.start(site_specs(two_sites))
        base = [sys.executable, "-P", "-m", "pathfl", "fl", "run", "--server", fed.server]
        base += ["--insecure"]
        with open(tmp_path / "run.log", "wb") as log:
            proc = subprocess.Popen(
                [*base, "--config", str(config), "--out", str(out)],
                stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
            )  # fmt: skip
        try:
            _wait_rounds(proc, out)
            run_id = RunDir(out).read_status()["run_id"]
            t0 = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) == 143, (tmp_path / "run.log").read_text()[-3000:]
            print(f"fl run SIGTERM: exit 143 after {time.monotonic() - t0:.1f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
        assert flower_cli.run_status(fed.home, int(run_id)).startswith("finished"), run_id
        deadline = time.monotonic() + STOP_LIMIT_S
        while "flwr-serverapp" in " ".join(_cmdlines(descendants([fed.superlink.pid]))):
            assert time.monotonic() < deadline, "the stopped run's ServerApp still runs"
            time.sleep(0.2)
        status = RunDir(out).read_status()
        assert status["state"] == "interrupted", status
        done = RunDir(out).load_checkpoint()[0]["round"]
        assert 1 <= done < 3

        res = subprocess.run(
            [*base, "--resume", str(out)], capture_output=True, text=True, env=_env(),
            timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert RunDir(out).read_status()["state"] == "completed"
    assert [r["round"] for r in RunDir(out).read_rounds()] == [1, 2, 3]
    assert (out / "model.pt").is_file()


DEMO_LIKE = """
import sys
from pathlib import Path
from pathfl.demo.pipeline import run_cli
from pathfl.fl.flower.lifetime import stop_on_signals
with stop_on_signals():
    sys.exit(run_cli(sys.argv[2:], log_path=Path(sys.argv[1]), label="fl simulate"))
"""


def test_demo_stage_runner_forwards_sigterm(two_sites, tmp_path) -> None:
    """`pathfl demo` runs `fl simulate` as a child in its own session (pathfl.demo.pipeline
    .run_cli); SIGTERM to the demo's pid alone (`kill PID`) is forwarded: the stage stops its
    federation, the demo exits 143, nothing is left."""
    out = tmp_path / "run"
    stage_log = tmp_path / "stage.log"
    proc = _start_simulate(two_sites, out, cwd=tmp_path, launcher=["-c", DEMO_LIKE, str(stage_log)])
    _wait_rounds(proc, out)
    snapshot = descendants([proc.pid])
    assert "fast_supernode" in " ".join(_cmdlines(snapshot))
    stage = [pid for pid, _ in snapshot if b"simulate" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    try:
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, _log(out) + stage_log.read_text()[-3000:]
        _assert_all_gone(snapshot, proc.pid, within_s=5.0, out=out)
        for pid in stage:
            assert not _tagged(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(snapshot)
    print(f"demo stage runner SIGTERM: exit 143, all gone after {time.monotonic() - t0:.1f} s")
    assert "stopped by SIGTERM" in stage_log.read_text()  # the stage got it and cleaned up
