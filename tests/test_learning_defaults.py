"""Regression guard for the *default* learning recipe: `pathfl train` with no tuning option,
on real survival data shipped with scikit-survival, must stay close to the linear-cox baseline
it reports beside itself. A change that breaks the defaults fails here (the full comparison is
`scripts/bench_learning.py`, BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pathfl.cli import app
from pathfl.survival.cohorts import sksurv_cohort, write_cohort

RUNNER = CliRunner()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_default_train_keeps_up_with_linear_cox(tmp_path: Path, seed: int) -> None:
    cohort = sksurv_cohort("veterans", seed=seed)
    feats, clinical = write_cohort(cohort.bags, tmp_path / "data")
    r = RUNNER.invoke(
        app,
        [
            "train",
            "--features",
            str(feats),
            "--clinical",
            str(clinical),
            "--out",
            str(tmp_path / "run"),
            "--seed",
            str(seed),
            "--covariates",
            "",
        ],
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model_c, lc_c = m["pooled_oof"]["c_index"], m["linear_cox"]["c_index"]
    assert lc_c > 0.65  # the baseline itself learns on veterans (sanity of the comparison)
    assert model_c >= 0.95 * lc_c, (model_c, lc_c)
    assert m["linear_cox"]["n"] == m["pooled_oof"]["n"] == len(cohort.bags)  # same patients


@pytest.mark.slow
def test_default_fl_simulate_keeps_up_with_linear_cox(tmp_path: Path) -> None:
    """Default `fl simulate` (no learning option at all) of 2 sites of GBSG2: the federated
    model is within 5 % of the pooled site-stratified linear-cox on the same validation
    pairs, and not below the pooled attention model by more than 0.05."""
    from pathfl.fl.flower.simulate import simulate, site_specs
    from pathfl.survival.cohorts import write_sites

    cohort = sksurv_cohort("gbsg2", n_sites=2, seed=0, max_patients=300)
    specs = site_specs(write_sites(cohort, tmp_path / "sites"))
    summary = simulate(specs, {}, tmp_path / "run")
    fed = summary["federated_c_index"]
    base = summary["baselines"]
    lc = base["linear_cox_pooled"]["federated_c_index"]
    assert lc > 0.6, base  # the comparison is meaningful
    assert fed >= 0.95 * lc, (fed, lc)
    assert fed >= base["pooled"]["federated_c_index"] - 0.05, (fed, base["pooled"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the federated Newton fit reproduces the pooled site-stratified one
    assert metrics["linear_cox"]["federated_c_index"] == pytest.approx(lc, abs=1e-4)
