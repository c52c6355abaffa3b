"""Unseen-site evaluation (issue 15): site-preserved cross-validation of `pathfl train
--group-by site` (every fold holds one site out whole), per-site personalisation that changes
only local weights, and (slow) `pathfl fl simulate --leave-one-site-out` with real processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.survival.synthetic import make_cohort

RUNNER = CliRunner()


def _with_sites(csv_path: Path, sites: list[str]) -> dict[str, str]:
    """Add a ``site`` column (round-robin over patients); returns {patient_id: site}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    site_of = {p: sites[i % len(sites)] for i, p in enumerate(patients)}
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "site"])
        w.writeheader()
        w.writerows({**r, "site": site_of[r["patient_id"]]} for r in rows)
    return site_of


def test_train_group_by_site_keeps_sites_whole(tmp_path: Path) -> None:
    c = make_cohort(tmp_path / "c", n_patients=30, feature_dim=6, tiles=(4, 8), seed=3)
    site_of = _with_sites(c.clinical_csv, ["a", "b", "c"])
    run = tmp_path / "run"
    args = ["train", "--features", c.features_dir, "--clinical", c.clinical_csv, "--out", run]
    args += ["--group-by", "site", "--epochs", "1", "--min-steps", "3", "--hidden-dim", "8"]
    args += ["--n-boot", "0", "--threads", "1"]
    r = RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["group_by"] == "site"
    assert [m["held_out_site"] for m in metrics["folds"]] == ["a", "b", "c"]
    with open(run / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 30  # every patient predicted once, out of fold
    for row in preds:  # the fold that predicted a patient held out exactly its site
        held = metrics["folds"][int(row["fold"])]["held_out_site"]
        assert site_of[row["patient_id"]] == held
    for m in metrics["folds"]:
        assert m["n"] == sum(1 for s in site_of.values() if s == m["held_out_site"])
    assert "site a" in r.output  # the table names the held-out site


def test_train_group_by_needs_sites(tmp_path: Path) -> None:
    c = make_cohort(tmp_path / "c", n_patients=12, feature_dim=4, tiles=(2, 4), seed=1)
    args = ["train", "--features", c.features_dir, "--clinical", c.clinical_csv]
    args += ["--out", tmp_path / "run", "--group-by", "site", "--epochs", "1", "--min-steps", "3"]
    r = RUNNER.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2 and "site" in r.output
    assert not (tmp_path / "run").exists()
