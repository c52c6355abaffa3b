"""Ctrl-C and SIGTERM on real `pathfl` processes (tile, extract, train, the demo's child runs):
SIGINT goes to the process group as a terminal sends it, SIGTERM to the leader as a scheduler
does. Each test checks the exit code, the time to stop, the manifest, that no process of the
run is left, and that a rerun resumes."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
from slides import synthetic_tissue, write_tiled_tiff

from pathfl.fl.flower.processes import group_running
from pathfl.interrupts import EXIT_SIGINT, EXIT_SIGTERM

REPO = Path(__file__).resolve().parents[1]
STOP_BOUND_S = 15.0  # generous: this is not a speed test


def start(*args: str, quiet: bool = True) -> subprocess.Popen:
    """``python -m pathfl ARGS`` in a new session (its own process group, like a shell job)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "pathfl", *(["-q"] if quiet else []), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


class Lines:
    """The output of a running process, read by a thread (so the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended before {what}:\n{proc.communicate()[0]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} within {timeout} s")


def interrupt(
    proc: subprocess.Popen, sig: int, *, twice: bool = False, lines: Lines | None = None
) -> tuple[int, float, str]:
    """Send ``sig`` (SIGINT to the group, SIGTERM to the leader); returns (exit code, seconds
    to exit, output). Fails if any process of the group is still running 5 s later."""
    send = (
        (lambda: os.killpg(proc.pid, sig))
        if sig == signal.SIGINT
        else (lambda: proc.send_signal(sig))
    )
    t0 = time.monotonic()
    send()
    if twice:
        time.sleep(0.2)
        send()
    try:
        if lines is None:
            out, _ = proc.communicate(timeout=60)
        else:
            proc.wait(timeout=60)
            lines.thread.join(timeout=10)
            out = lines.text()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"did not stop within 60 s after {signal.Signals(sig).name}")
    elapsed = time.monotonic() - t0
    assert_group_gone(proc.pid)
    return proc.returncode, elapsed, out


def assert_group_gone(pgid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while group_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_running(pgid):
        os.killpg(pgid, signal.SIGKILL)
        pytest.fail(f"processes of group {pgid} are still running")


def rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["slide_id"]: r for r in csv.DictReader(f)}


def report(name: str, elapsed: float) -> None:
    print(f"\nstop time {name}: {elapsed:.2f} s")


# ---------------------------------------------------------------------------------- tile
N_SLIDES = 40


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("slides")
    first = write_tiled_tiff(src / "s00.tif", synthetic_tissue(768, 1024, seed=3), mpp=0.5)
    for i in range(1, N_SLIDES):
        shutil.copy(first, src / f"s{i:02d}.tif")
    return src


def tile_args(src: Path, out: Path) -> tuple[str, ...]:
    return ("tile", str(src), "--out", str(out), "--workers", "2")


def check_tile_outputs(out: Path) -> set[str]:
    """Every manifest row is ok with a complete coords file; returns the done slide ids."""
    done = rows(out / "manifest.csv")
    assert all(r["status"] == "ok" for r in done.values()), done
    for sid in done:
        with h5py.File(out / "coords" / f"{sid}.h5", "r") as f:
            assert len(f["coords"]) > 0 and len(f.attrs["fingerprint"]) == 64
    return set(done)


def rerun_tile_resumes(src: Path, out: Path, done_before: set[str]) -> None:
    proc = start(*tile_args(src, out))
    out_text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out_text
    after = rows(out / "manifest.csv")
    assert len(after) == N_SLIDES
    assert all(r["status"] in ("ok", "skipped") for r in after.values())
    assert {sid for sid, r in after.items() if r["status"] == "skipped"} >= done_before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_tile_interrupted_mid_batch_then_resumes(tmp_path: Path, slide_dir: Path, sig) -> None:
    out = tmp_path / "out"
    proc = start(*tile_args(slide_dir, out))
    wait_for(lambda: len(rows(out / "manifest.csv")) >= 2, proc, 120, "two slides tiled")
    code, elapsed, text = interrupt(proc, sig)
    report(f"tile -j 2 {signal.Signals(sig).name}", elapsed)
    assert code == (EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM), text
    assert elapsed < STOP_BOUND_S, text
    assert "Traceback" not in text and "interrupted by" in text, text
    done = check_tile_outputs(out)
    assert 2 <= len(done) < N_SLIDES - 4, "the queued slides were not cancelled"
    rerun_tile_resumes(slide_dir, out, done)


@pytest.mark.slow
def test_tile_second_ctrl_c_stops_at_once(tmp_path: Path, slide_dir: Path) -> None:
    out = tmp_path / "out"
    proc = start(*tile_args(slide_dir, out))
    wait_for(lambda: len(rows(out / "manifest.csv")) >= 1, proc, 120, "one slide tiled")
    code, elapsed, text = interrupt(proc, signal.SIGINT, twice=True)
    report("tile -j 2 SIGINT twice", elapsed)
    assert code == EXIT_SIGINT, text
    assert elapsed < 5.0, text
    check_tile_outputs(out)


@pytest.mark.slow
def test_tile_workers_die_with_a_killed_parent(tmp_path: Path, slide_dir: Path) -> None:
    """SIGKILL of the main process only: the workers notice (parent-death signal) and exit."""
    out = tmp_path / "out"
    proc = start(*tile_args(slide_dir, out))
    wait_for(lambda: len(rows(out / "manifest.csv")) >= 1, proc, 120, "one slide tiled")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # (not communicate: orphaned workers would hold the pipe open)
    assert_group_gone(proc.pid)


# ------------------------------------------------------------------------------- extract
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_extract_interrupted_mid_batch_then_resumes(tmp_path: Path, sig) -> None:
    from test_extract import make_cohort

    tiles = make_cohort(tmp_path, n_slides=6, n_side=5)
    out = tmp_path / "out"
    feats = out / "features"
    args = ("extract", "--tiles", str(tiles), "--out", str(out), "--batch-size", "2",
            "--workers", "2", "--threads", "1")  # fmt: skip
    proc = start(*args)
    # a slide is finished when its manifest row is written (after its file's rename)
    wait_for(lambda: len(rows(feats / "manifest.csv")) >= 1, proc, 180, "one slide finished")
    code, elapsed, text = interrupt(proc, sig)
    report(f"extract --workers 2 {signal.Signals(sig).name}", elapsed)
    assert code == (EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM), text
    assert elapsed < STOP_BOUND_S, text
    assert "Traceback" not in text, text
    done = rows(feats / "manifest.csv")
    assert done and all(r["status"] == "ok" for r in done.values()), done
    # every finished slide has its file; a file renamed in the instant before the signal may
    # still lack its row — it is complete, and the re-run below skips it like the others
    finished = {p.stem for p in feats.glob("slide*.h5")}
    assert set(done) <= finished
    assert len(finished) < 6, "extract finished before the interrupt; make the cohort larger"
    assert not list(feats.glob(".*.tmp")), "a partial features file was left"

    proc = start(*args)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    after = rows(feats / "manifest.csv")
    assert len(after) == 6
    assert {sid for sid, r in after.items() if r["status"] == "skipped"} == finished


@pytest.mark.slow
def test_extract_loader_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    from test_extract import make_cohort

    tiles = make_cohort(tmp_path, n_slides=4, n_side=5)
    out = tmp_path / "out"
    proc = start("extract", "--tiles", str(tiles), "--out", str(out), "--batch-size", "2",
                 "--workers", "2", "--threads", "1")  # fmt: skip
    wait_for(lambda: bool(list((out / "features").glob(".*.tmp"))), proc, 180, "a slide started")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # (not communicate: orphaned workers would hold the pipe open)
    assert_group_gone(proc.pid, timeout=3.0)  # torch's own watchdog would take ~5 s


# --------------------------------------------------------------------------------- train
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_interrupted_mid_epoch(tmp_path: Path, sig) -> None:
    from pathfl.survival.synthetic import make_cohort

    c = make_cohort(tmp_path, n_patients=40, feature_dim=16, tiles=(64, 128), seed=2)
    run = tmp_path / "run"
    proc = start("-v", "train", "--features", str(c.features_dir), "--clinical",
                 str(c.clinical_csv), "--out", str(run), "--folds", "5", "--epochs", "40",
                 "--threads", "1", "--n-boot", "10", quiet=False)  # fmt: skip
    lines = Lines(proc)  # INFO (-v) "fold 1: C-index ..." once the first fold is trained
    wait_for(lambda: "fold 1:" in lines.text(), proc, 120, "first fold trained")
    code, elapsed, text = interrupt(proc, sig, lines=lines)
    assert "fold 5:" not in text, "training finished before the interrupt"
    report(f"train {signal.Signals(sig).name}", elapsed)
    assert code == (EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM), text
    assert elapsed < STOP_BOUND_S, text
    assert "Traceback" not in text, text
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------------------------- demo
PARENT = """
import sys
from pathlib import Path
from pathfl.demo.pipeline import run_cli
from pathfl.interrupts import Interrupted, handling_signals
try:
    with handling_signals():
        sys.exit(run_cli(sys.argv[2:], log_path=Path(sys.argv[1]), label="tile"))
except Interrupted as e:
    sys.exit(e.exit_code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_stage_child_stops_with_its_parent(tmp_path: Path, slide_dir: Path, sig) -> None:
    """The demo runs `pathfl tile` as a child (``run_cli``): a SIGTERM to the demo reaches
    the child, a terminal's SIGINT reaches both; both stop and the child's manifest is kept."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "tile.log"), *tile_args(slide_dir, out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: len(rows(out / "manifest.csv")) >= 2, proc, 120, "two slides tiled")
    code, elapsed, text = interrupt(proc, sig)
    report(f"demo stage (run_cli tile -j 2) {signal.Signals(sig).name}", elapsed)
    assert code == (EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM), text
    assert elapsed < STOP_BOUND_S, text
    log = (tmp_path / "tile.log").read_text()
    assert f"interrupted by {signal.Signals(sig).name}" in log, log
    assert len(check_tile_outputs(out)) < N_SLIDES


# --------------------------------------------------------------------------- in-process
def test_first_signal_raises_interrupted_with_its_exit_code() -> None:
    from pathfl.interrupts import Interrupted, handling_signals, received

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with handling_signals():
            assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert {s: signal.getsignal(s) for s in before} == before  # restored: no signal came
        with pytest.raises(Interrupted) as e, handling_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before
        assert e.value.exit_code == EXIT_SIGTERM == 143 and e.value.name == "SIGTERM"
        assert received() == signal.SIGTERM
        assert not isinstance(e.value, Exception)  # `except Exception` must not swallow it
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_exception_python_dropped_still_stops_the_next_checkpoint() -> None:
    """A signal that lands in a finaliser raises there and Python drops the exception
    ("Exception ignored in ..."), as seen once in CI during a loader's garbage collection:
    the signal is still recorded, and the next :func:`checkpoint` raises it."""
    from pathfl.interrupts import Interrupted, checkpoint, handling_signals, received

    class SignalsInFinaliser:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here and its exception is dropped

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with handling_signals():
            checkpoint()  # no signal yet: nothing happens
            obj = SignalsInFinaliser()
            del obj  # the finaliser runs now; its Interrupted goes nowhere
            assert received() == signal.SIGINT
            with pytest.raises(Interrupted) as e:
                checkpoint()
        assert e.value.exit_code == EXIT_SIGINT
        checkpoint()  # outside handling_signals() a past signal no longer raises
    finally:
        for s, h in before.items():
            signal.signal(s, h)
