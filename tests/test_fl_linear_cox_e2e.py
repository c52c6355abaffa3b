"""One real federation (processes on 127.0.0.1, TLS + site auth) of two sites with a clinical
covariate: the federated scaler equals a pooled fit on the sites' training bags, the final run
dir serves `pathfl predict` with that scaler, each site took the steps the server fixed, and
the federated Newton–Raphson linear-cox equals the pooled site-stratified fit; the federated
Breslow baseline equals the pooled one on the run's grid and `pathfl predict --times` gives
S(t | x) from it; the server optimiser (FedAdam) state is checkpointed, never sent."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FL_CFG = {
    "rounds": 2,
    "local_steps": 4,
    "model": "meanpool",
    "loss": "cox",
    "covariates": ["age"],
    "hidden_dim": 16,
    "dropout": 0.0,
    "bags_per_batch": 8,
    "val_folds": 3,
    "min_sites": 2,
    "epochs": 2,
    "min_steps": 10,  # the baselines' budget (pathfl train's recipe) stays small
    "round_timeout_s": 240,
    "connect_timeout_s": 180,
    "seed": 2,
    "aggregation": "fedadam",
    "server_lr": 0.01,
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two sites of one planted-signal cohort with an age effect; one simulate run."""
    from pathfl.fl.flower.simulate import simulate, site_specs
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    root = tmp_path_factory.mktemp("fl_lc")
    cohort = make_cohort(
        root / "all",
        n_patients=60,
        feature_dim=6,
        tiles=(5, 12),
        seed=11,
        two_slide_fraction=0.0,
        effect=3.0,
        covariate_effect=1.0,
    )
    dirs = split_into_sites(cohort, root, ["site_a", "site_b"])
    out = root / "run"
    summary = simulate(site_specs(dirs), FL_CFG, out, tls=True)
    return dirs, out, summary


def test_federated_linear_cox_equals_pooled_stratified(federation) -> None:
    from pathfl.fl.flower.processes import group_running

    _, out, summary = federation
    assert summary["pids"] and not any(group_running(p) for p in summary["pids"])
    metrics = json.loads((out / "metrics.json").read_text())
    fed = metrics["linear_cox"]
    pooled = summary["baselines"]["linear_cox_pooled"]
    assert fed.get("converged"), fed
    assert 2 <= fed["iterations"] < 25 and fed["max_abs_gradient"] < 1e-6
    b_fed, b_pool = np.asarray(fed["beta"]), np.asarray(pooled["beta"])
    assert b_fed.shape == (7,)  # 6 mean-pooled features + age
    rel = np.max(np.abs(b_fed - b_pool)) / np.max(np.abs(b_pool))
    assert rel < 1e-5, (b_fed, b_pool)
    assert abs(fed["federated_c_index"] - pooled["federated_c_index"]) < 1e-4
    for site, c in pooled["per_site_c_index"].items():
        assert abs(fed["per_site_c_index"][site] - c) < 1e-4
    # one wave at beta = 0, then one per iteration (more only if a step was halved)
    n_waves = len(fed["seconds_per_wave"])
    assert n_waves >= fed["iterations"] + 1
    table = summary["table"]
    assert "linear-cox (federated)" in table and "linear-cox (pooled, site-stratified)" in table
    # every Newton request is in each site's own audit log
    for site in ("site_a", "site_b"):
        log = out / "federation" / "sites" / site / "audit.jsonl"
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events.count("linear_cox") == n_waves


def test_federated_scaler_and_covariates_reach_predict(federation, tmp_path) -> None:
    from typer.testing import CliRunner

    from pathfl.cli import app
    from pathfl.fl.baselines import load_sites
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.flower.simulate import site_specs
    from pathfl.fl.rundir import RunDir
    from pathfl.survival.data import load_bags, load_clinical
    from pathfl.survival.run import load_run
    from pathfl.survival.scaling import BagScaler
    from pathfl.survival.train import predict

    dirs, out, _ = federation
    model, cfg, extras = load_run(out)
    assert cfg.covariates == ["age"] and extras["n_covariates"] == 1
    scaler = extras["scaler"]
    # exactly the scaler a pooled fit on every site's training bags gives
    sites = load_sites(site_specs(dirs), effective_config({**FL_CFG, "num_sites": 2}))
    ref = BagScaler.fit([b for s in sites for b in s.train], ["age"])
    assert scaler.columns == ["age"]
    for a, b in ((scaler.features, ref.features), (scaler.covariates, ref.covariates)):
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-10)
    # each site took the steps the server fixed, in every round
    for row in RunDir(out).read_rounds():
        assert {m["train_steps"] for m in row["sites"].values()} == {FL_CFG["local_steps"]}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_per_round"] == FL_CFG["local_steps"]

    # `pathfl predict` on the federated run dir applies the stored scaler
    pred_csv = tmp_path / "pred.csv"
    site = dirs[0]
    r = CliRunner().invoke(
        app,
        ["predict", "--run", str(out), "--features", str(site / "features"), "--clinical",
         str(site / "clinical.csv"), "--out", str(pred_csv)],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(pred_csv) as f:
        got = {row["patient_id"]: float(row["risk"]) for row in csv.DictReader(f)}
    raw = load_bags(site / "features", load_clinical(site / "clinical.csv", covariates=["age"]),
                    covariates=["age"])  # fmt: skip
    want = predict(model, scaler.apply(raw), cfg, time_bins=None)
    unscaled = predict(model, raw, cfg, time_bins=None)
    assert len(got) == len(raw)
    np.testing.assert_allclose([got[p] for p in want.patient_ids], want.risk, rtol=1e-4, atol=1e-5)
    assert not np.allclose(unscaled.risk, want.risk, atol=1e-3)


def test_site_lacking_a_covariate_fails_check_in_clearly(federation, tmp_path) -> None:
    """The site's check-in reply is an error naming its clinical file and the column."""
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.site import handle
    from pathfl.survival.data import ClinicalError

    dirs, _, _ = federation
    site = dirs[1]
    clinical = tmp_path / "clinical.csv"
    with open(site / "clinical.csv") as f:
        rows = list(csv.DictReader(f))
    with open(clinical, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["patient_id", "slide_id", "time", "event"])
        w.writeheader()
        w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
    node = {"site": "b", "features": str(site / "features"), "clinical": str(clinical)}
    cfg = effective_config({**FL_CFG, "num_sites": 2})
    with pytest.raises(ClinicalError) as e:
        handle("query", node, {**cfg, "round": 0}, None)
    assert str(clinical) in str(e.value) and "age" in str(e.value)


def test_federated_breslow_equals_pooled_and_serves_predict(federation, tmp_path) -> None:
    from typer.testing import CliRunner

    from pathfl.cli import app
    from pathfl.fl.aggregate import time_grid
    from pathfl.fl.baselines import load_sites
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.flower.simulate import site_specs
    from pathfl.survival.losses import baseline_from_sums, breslow_sums, cox_survival
    from pathfl.survival.run import load_run
    from pathfl.survival.train import predict

    dirs, out, _ = federation
    model, cfg, extras = load_run(out)
    fed = json.loads((out / "metrics.json").read_text())["breslow"]
    assert "skipped" not in fed, fed
    run_cfg = json.loads((out / "fl_config.json").read_text())["config"]
    starts = time_grid(float(run_cfg["time_grid_max"]), int(run_cfg["time_grid_cells"]))[:-1]
    # pooled: the union of the sites' training parts (same split), the run's scaler
    sites = load_sites(site_specs(dirs), effective_config({**FL_CFG, "num_sites": 2}))
    preds = [predict(model, extras["scaler"].apply(s.train), cfg, time_bins=None) for s in sites]
    risk, event, time_ = (
        np.concatenate([getattr(p, k) for p in preds]) for k in ("risk", "event", "time")
    )
    t_ref, h_ref = baseline_from_sums(*breslow_sums(risk, event, time_, starts), starts)
    times, cumhaz = extras["baseline"]
    np.testing.assert_array_equal(times, t_ref)
    np.testing.assert_allclose(cumhaz, h_ref, rtol=1e-8, atol=0)
    assert fed["missing_sites"] == []
    # the sums rode on each site's final evaluation reply, logged in its own audit log
    for site in ("site_a", "site_b"):
        log = out / "federation" / "sites" / site / "audit.jsonl"
        entries = [json.loads(x) for x in log.read_text().splitlines()]
        assert [e.get("breslow_sums_sent") for e in entries if e["event"] == "evaluate"] == [True]

    # S(t | x) from predict on the federated run
    site, pred_csv = dirs[0], tmp_path / "pred.csv"
    t_mid = float(np.median(times))
    r = CliRunner().invoke(
        app,
        ["predict", "--run", str(out), "--features", str(site / "features"), "--clinical",
         str(site / "clinical.csv"), "--out", str(pred_csv), "--times", f"{t_mid:g}"],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "integrated brier" in r.output
    with open(pred_csv) as f:
        rows = list(csv.DictReader(f))
    got = np.array([float(row[f"surv_{t_mid:g}"]) for row in rows])
    want = cox_survival(np.array([float(row["risk"]) for row in rows]), (times, cumhaz),
                        np.array([float(f"{t_mid:g}")]))[:, 0]  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert 0.0 < got.min() < got.max() < 1.0


def test_server_optimiser_state_is_checkpointed(federation) -> None:
    _, out, _ = federation
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["server_opt"] == {"t": FL_CFG["rounds"], "arrays": "rounds/server_opt_002.npz"}
    with np.load(out / state["server_opt"]["arrays"]) as z:
        assert any(k.startswith("m") for k in z.files) and any(k.startswith("v") for k in z.files)
    assert json.loads((out / "metrics.json").read_text())["aggregation"] == "fedadam"
