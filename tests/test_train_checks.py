"""`pathfl train/predict/heatmap` through the real console command: a rerun never destroys a
run (refused without --overwrite, replaced wholly and atomically with it, an interrupted
retrain leaves the old run intact); cohorts mixing tilings are refused; the run records how
its features were made and predict/heatmap refuse features made otherwise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from slides import synthetic_tissue, write_tiled_tiff

from pathfl.survival.synthetic import make_cohort

FAST = ("--epochs", "1", "--hidden-dim", "8", "--n-boot", "10", "--threads", "1")


def _pathfl(*args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pathfl", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _set_attrs(folder: Path, **attrs: object) -> None:
    for p in folder.glob("*.h5"):
        with h5py.File(p, "r+") as f:
            f.attrs.update(attrs)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.glob(f".{name}.*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, Path]:
    root = tmp_path_factory.mktemp("checks")
    c = make_cohort(root, n_patients=16, feature_dim=8, tiles=(6, 10), grid_cols=4, seed=3)
    run = root / "run"
    r = _pathfl(
        "train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", run, "--folds", "2",
        *FAST,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return root, c, run


def test_run_records_how_its_features_were_made(trained) -> None:
    _, _, run = trained
    fp = json.loads((run / "config.json").read_text())["fingerprint"]
    assert (fp["target_mpp"], fp["tile_size"], fp["encoder"], fp["feature_dim"]) == (
        0.5,
        224,
        "synthetic",
        8,
    )
    assert fp["weights_sha256"] == "none" and fp["dtype"] == "float32"
    # the run was built in a temporary folder: no path in it names that folder
    metrics = (run / "metrics.json").read_text()
    assert ".partial-" not in metrics
    km = json.loads(metrics)["km_logrank"]["png"]
    assert Path(km) == (run / "plots" / "km_risk_groups.png").absolute() and Path(km).is_file()
    assert _leftovers(run.parent, run.name) == []


def test_rerun_refused_without_overwrite_and_replaces_wholly_with_it(trained, tmp_path) -> None:
    _, c, run0 = trained
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    before = _snapshot(run)
    assert {"predictions.csv", "plots/km_risk_groups.png", "model.pt"} <= set(before)
    args = ("train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", run, *FAST)
    r = _pathfl(*args, "--folds", "1")
    assert r.returncode == 2, r.stderr
    assert f"--out {run} already holds a run" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
    assert _snapshot(run) == before  # byte-identical, nothing added

    r = _pathfl(*args, "--folds", "1", "--overwrite")
    assert r.returncode == 0, r.stderr
    after = _snapshot(run)
    # a --folds 1 run has no out-of-fold predictions or KM plot: none of the old ones remain
    assert set(after) == {"config.json", "metrics.json", "model.pt", "report.html"}
    assert after["model.pt"] != before["model.pt"]
    assert after["report.html"] != before["report.html"]  # the new run's own report
    assert json.loads((run / "config.json").read_text())["folds"] == 1
    assert _leftovers(tmp_path, "run") == []

    # any other files count as well
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = _pathfl("train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", other, *FAST)
    assert r.returncode == 2 and "already holds files (keep.txt)" in r.stderr
    assert (other / "keep.txt").read_text() == "mine"
    a_file = other / "keep.txt"
    r = _pathfl(
        "train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", a_file, "--overwrite",
        *FAST,
    )  # fmt: skip
    assert r.returncode == 2 and "is a file, not a run directory" in r.stderr
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_retrain_leaves_the_old_run_intact(trained, tmp_path, sig) -> None:
    _, c, run0 = trained
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    before = _snapshot(run)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pathfl", "train", "-f", str(c.features_dir), "--clinical",
         str(c.clinical_csv), "-o", str(run), "--overwrite", "--folds", "2", "--epochs", "500",
         "--hidden-dim", "8", "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _leftovers(tmp_path, "run") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    assert _leftovers(tmp_path, "run"), "training never started"
    time.sleep(1.0)  # inside the folds
    os.kill(proc.pid, sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _snapshot(run) == before
    if sig == signal.SIGINT:  # the partial folder is removed on the way out
        assert _leftovers(tmp_path, "run") == []
    else:  # a SIGKILL leaves it; the next run removes it before building its own
        assert _leftovers(tmp_path, "run")
        r = _pathfl(
            "train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", run, "--folds",
            "1", "--overwrite", *FAST,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _leftovers(tmp_path, "run") == [] and "predictions.csv" not in _snapshot(run)


def test_cohort_mixing_tilings_refused_through_the_cli(tmp_path) -> None:
    c = make_cohort(tmp_path, n_patients=6, feature_dim=4, tiles=(3, 5), grid_cols=4, seed=1)
    with h5py.File(c.features_dir / "P0001_S0.h5", "r+") as f:
        f.attrs.update({"target_mpp": 8.0, "tile_size": 16})
    with h5py.File(c.features_dir / "P0002_S0.h5", "r+") as f:
        f.attrs["target_mpp"] = 0.25
    out = tmp_path / "run"
    r = _pathfl("train", "-f", c.features_dir, "--clinical", c.clinical_csv, "-o", out, *FAST)
    assert r.returncode == 2, r.stderr
    assert "mix target_mpp values" in r.stderr and "mix tile_size values" in r.stderr
    assert "target_mpp=8.0 in 1 slide(s): P0001_S0 (line" in r.stderr
    assert "target_mpp=0.25 in 1 slide(s): P0002_S0 (line" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_predict_and_heatmap_refuse_features_made_otherwise(trained, tmp_path) -> None:
    _, c, run = trained
    other = tmp_path / "features_8um"
    shutil.copytree(c.features_dir, other)
    _set_attrs(other, target_mpp=8.0, tile_size=16)
    out_csv = tmp_path / "risks.csv"
    r = _pathfl("predict", "--run", run, "-f", other, "--slides", "P0000_S0", "-o", out_csv)
    assert r.returncode == 2, r.stderr
    assert "target_mpp=8.0 here but 0.5 in the run's training features" in r.stderr
    assert "tile_size=16 here but 224" in r.stderr and str(run) in r.stderr
    assert not out_csv.exists()
    slide = write_tiled_tiff(
        tmp_path / "P0000_S0.tiff", synthetic_tissue(1024, 1024, seed=1), mpp=0.5, levels=2
    )
    png = tmp_path / "heat.png"
    r = _pathfl("heatmap", "--run", run, "-f", other, "--slide", slide, "-o", png)
    assert r.returncode == 2, r.stderr
    assert f"{other / 'P0000_S0.h5'}" in r.stderr and "target_mpp=8.0 here but 0.5" in r.stderr
    assert not png.exists()
    # the same features as the run's: predicted
    r = _pathfl(
        "predict", "--run", run, "-f", c.features_dir, "--slides", "P0000_S0", "-o", out_csv
    )
    assert r.returncode == 0, r.stderr
    assert out_csv.is_file()


def test_heatmap_uses_the_mpp_its_features_record(trained, tmp_path) -> None:
    """A slide without mpp metadata (tiled with --mpp-override): heatmap reads the mpp from the
    features file instead of failing with advice about options it does not have."""
    _, c, run = trained
    slide = write_tiled_tiff(
        tmp_path / "P0000_S0.tiff", synthetic_tissue(1024, 1024, seed=1), mpp=None, levels=2
    )
    png = tmp_path / "heat.png"
    r = _pathfl("heatmap", "--run", run, "-f", c.features_dir, "--slide", slide, "-o", png)
    assert r.returncode == 0, r.stderr
    assert png.is_file() and (tmp_path / "heat_scores.csv").is_file()
    # neither the slide nor the features file knows: one message, exit 2
    feats = tmp_path / "features"
    shutil.copytree(c.features_dir, feats)
    with h5py.File(feats / "P0000_S0.h5", "r+") as f:
        del f.attrs["mpp_level0"]
    r = _pathfl("heatmap", "--run", run, "-f", feats, "--slide", slide, "-o", tmp_path / "h2.png")
    assert r.returncode == 2, r.stderr
    assert "microns per pixel unknown" in r.stderr and "--mpp-override" in r.stderr
    assert "--slides-csv" not in r.stderr and "Traceback" not in r.stderr
