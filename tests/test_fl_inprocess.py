"""The in-process transport (:mod:`pathfl.fl.flower.inprocess`) runs the same federation as
real Flower processes: same final weights and federated C on the same cohort and seed, and a
site's policy refusal reaches the coordinator as the same error reply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_fl_e2e import planted_sites

CFG = {
    "rounds": 2,
    "local_epochs": 1,
    "model": "meanpool",
    "loss": "cox",
    "lr": 0.005,
    "bags_per_batch": 8,
    "hidden_dim": 16,
    "dropout": 0.0,
    "val_folds": 3,
    "min_sites": 2,
    "linear_cox": False,
    "round_timeout_s": 240,
    "connect_timeout_s": 180,
    "seed": 3,
}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Path]:
    """A small planted-signal cohort split by patient into sites a, b, c."""
    return planted_sites(tmp_path_factory.mktemp("inproc_sites"), ["a", "b", "c"], n_patients=60)


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    from pathfl.survival.run import load_run

    model, _, _ = load_run(run_dir)
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _history(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return [r["federated_c_index_prev_global"] for r in rows]


@pytest.mark.slow
def test_inprocess_equals_real_flower(sites, tmp_path) -> None:
    """Two sites, two rounds: real SuperLink + SuperNodes (TLS, site auth) on 127.0.0.1 and
    the in-process transport give the same final model, round history and federated C."""
    from pathfl.fl.flower.simulate import simulate, site_specs

    specs = site_specs(sites[:2])
    real = simulate(specs, CFG, tmp_path / "flower", baselines=False)
    inproc = simulate(specs, CFG, tmp_path / "inproc", baselines=False, transport="inprocess")
    assert real["transport"] == "flower" and inproc["transport"] == "inprocess"
    assert real["pids"] and not inproc["pids"]  # no process was started in-process
    w_real, w_in = _weights(tmp_path / "flower"), _weights(tmp_path / "inproc")
    assert sorted(w_real) == sorted(w_in)
    diff = max(float(np.max(np.abs(w_real[k] - w_in[k]))) for k in w_real)
    assert diff <= 1e-6, diff  # measured: exactly 0.0
    assert len(_history(tmp_path / "inproc")) == CFG["rounds"]
    assert _history(tmp_path / "flower") == pytest.approx(_history(tmp_path / "inproc"), abs=1e-9)
    assert real["federated_c_index"] == pytest.approx(inproc["federated_c_index"], abs=1e-9)
    for sub in ("flower", "inproc"):  # each site's own audit log saw the same requests
        for s in ("a", "b"):
            log = tmp_path / sub / "federation" / "sites" / s / "audit.jsonl"
            events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
            assert events.count("train") == CFG["rounds"], (sub, s, events)


def test_inprocess_policy_refusal(sites, tmp_path) -> None:
    """Site c's policy allows only abmil; the meanpool run is refused by c (an error reply
    naming the rule, as Flower's flwr-clientapp sends it, plus a ``refused`` entry in c's
    audit log) and completes with a and b."""
    from pathfl.fl.flower.simulate import simulate
    from pathfl.fl.site import SiteSpec

    policy = tmp_path / "policy_c.yaml"
    policy.write_text("allowed_models: [abmil]\n")
    specs = [
        SiteSpec(p.name, p / "features", p / "clinical.csv", policy if p.name == "c" else None)
        for p in sites
    ]
    cfg = {**CFG, "rounds": 1}
    out = tmp_path / "run"
    summary = simulate(specs, cfg, out, baselines=False, transport="inprocess")
    assert summary["transport"] == "inprocess"
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert sorted(rows[0]["sites"]) == ["a", "b"]
    reason = rows[0]["failed"]["c"]
    assert "model 'meanpool' not allowed" in reason and "PolicyRefusalError" in reason, reason
    log = out / "federation" / "sites" / "c" / "audit.jsonl"
    refused = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "refused"]
    assert refused and any("meanpool" in r for r in refused[-1]["reason"])
