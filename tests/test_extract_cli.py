"""`pathfl extract` as a real process: exit codes, YAML config, and SIGKILL + rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from test_extract import grid, make_cohort, write_coords_file

from pathfl.formats.features_h5 import read_features
from pathfl.io import Manifest

REPO = Path(__file__).resolve().parents[1]


def pathfl(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pathfl", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console entry point in-process; returns (exit code, stdout + stderr)."""
    from pathfl.cli import main

    monkeypatch.setattr(sys, "argv", ["pathfl", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out + out.err


def test_exit_codes_and_config(tmp_path, monkeypatch, capsys) -> None:
    tiles = make_cohort(tmp_path, n_slides=2, n_side=1)
    # one slide whose source is gone → exit 1, the other still done
    write_coords_file(tiles / "coords" / "ghost.h5", tmp_path / "ghost.tif", grid(1, 1, 64))
    cfg = tmp_path / "extract.yaml"
    cfg.write_text("batch_size: 4\nworkers: 0\nthreads: 1\n")
    out_dir = str(tmp_path / "o")
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", out_dir,
                  "--config", str(cfg))  # fmt: skip
    assert rc == 1, out
    rows = Manifest.load(tmp_path / "o" / "features" / "manifest.csv").rows
    assert {k: r["status"] for k, r in rows.items()} == {
        "ghost": "failed",
        "slide0": "ok",
        "slide1": "ok",
    }
    assert "ghost" in out and "failed" in out
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", out_dir,
                  "--config", str(cfg))  # fmt: skip
    assert rc == 1 and "2 skipped" in out  # ghost still fails, the rest is up to date
    # usage errors → exit 2 with a message
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", out_dir,
                  "--shard", "3/2")  # fmt: skip
    assert rc == 2 and "--shard" in out
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tmp_path / "nowhere"),
                  "--out", out_dir)  # fmt: skip
    assert rc == 2 and "nowhere" in out
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", out_dir,
                  "--encoder", "resnet50-trunc")  # fmt: skip
    assert rc == 2 and "--weights" in out and "empty-hub" in out
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("batch_sise: 4\n")
    rc, out = cli(monkeypatch, capsys, "extract", "--tiles", str(tiles), "--out", out_dir,
                  "--config", str(bad_cfg))  # fmt: skip
    assert rc == 2 and "batch_sise" in out


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_without_corrupt_files(tmp_path) -> None:
    tiles = make_cohort(tmp_path, n_slides=4, n_side=5)
    out = tmp_path / "out"
    feats_dir = out / "features"
    args = ("extract", "--tiles", str(tiles), "--out", str(out), "--batch-size", "2",
            "--workers", "1", "--threads", "1")  # fmt: skip
    proc = pathfl(*args)
    deadline = time.monotonic() + 180
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(feats_dir.glob("slide*.h5"))
        temps = list(feats_dir.glob(".*.tmp"))
        if done and temps:  # mid-way through a later slide
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert killed, "extract finished before it could be killed; make the cohort larger"
    finished_before = {p.stem for p in feats_dir.glob("slide*.h5")}
    assert 1 <= len(finished_before) < 4
    for path in feats_dir.glob("slide*.h5"):  # whatever is there is complete
        feats, _, attrs = read_features(path)
        assert feats.shape == (25, 1280) and attrs["n_tiles"] == 25
    rc, log = finish(pathfl(*args))
    assert rc == 0, log
    rows = Manifest.load(feats_dir / "manifest.csv").rows
    for sid in ("slide0", "slide1", "slide2", "slide3"):
        expected = "skipped" if sid in finished_before else "ok"
        assert rows[sid]["status"] == expected, (sid, rows[sid])
        with h5py.File(feats_dir / f"{sid}.h5") as f:
            assert f["features"].shape == (25, 1280)
    assert not list(feats_dir.glob(".*.tmp")), "temporary files left behind"
