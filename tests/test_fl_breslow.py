"""Breslow baseline hazard: the per-cell sums (hand-computed), the exact estimator as the
special case of one cell per event time, and the federated baseline — sites' replies through
the real site handler, reply whitelist and server combination — equal to the pooled Breslow
estimate on the same grid (1e-8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathfl.survival.losses import baseline_from_sums, breslow_baseline, breslow_sums


def _naive_breslow(risk, event, time):
    """Textbook Breslow, written independently: at each distinct event time u,
    d(u) / Σ_{t_j ≥ u} exp(r_j), cumulated."""
    uniq = sorted({t for t, e in zip(time, event, strict=True) if e})
    h, out = 0.0, []
    for u in uniq:
        d = sum(1 for t, e in zip(time, event, strict=True) if e and t == u)
        h += d / sum(np.exp(r) for r, t in zip(risk, time, strict=True) if t >= u)
        out.append(h)
    return np.array(uniq), np.array(out)


def test_breslow_sums_hand_computed() -> None:
    # cells [0,1) [1,2) [2,∞); risks log 1, log 2, log 3, log 4
    risk = np.log([1.0, 2.0, 3.0, 4.0])
    time = np.array([0.5, 1.5, 1.2, 7.0])  # 7.0 is beyond the grid: last cell
    event = np.array([1, 0, 1, 1])
    d, s = breslow_sums(risk, event, time, np.array([0.0, 1.0, 2.0]))
    assert d.tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(s, [1 + 2 + 3 + 4, 2 + 3 + 4, 4], rtol=1e-14)
    t, h = baseline_from_sums(d, s, np.array([0.0, 1.0, 2.0]))
    assert t.tolist() == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(h, [1 / 10, 1 / 10 + 1 / 9, 1 / 10 + 1 / 9 + 1 / 4], rtol=1e-14)


def test_exact_breslow_is_the_one_cell_per_event_time_case() -> None:
    rng = np.random.default_rng(3)
    risk = rng.normal(size=50) * 2
    time = rng.integers(1, 15, size=50).astype(float)  # many ties
    event = rng.random(50) < 0.6
    t, h = breslow_baseline(risk, event, time)
    t_ref, h_ref = _naive_breslow(risk, event, time)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Inside a flwr-clientapp process Flower sets the task identity; here we do."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _federated_run(cfg: dict, nodes: dict[int, dict], arrays: list, tmp_path: Path):
    """A real :class:`FederatedRun` whose requests go to the real ClientApp in this process
    (Flower messages and reply whitelist as in a deployment; no SuperLink, no network)."""
    from flwr.app import Context, Message, RecordDict

    from pathfl.fl.coordinator import FederatedRun
    from pathfl.fl.flower.client_app import app
    from pathfl.fl.rundir import RunDir
    from pathfl.fl.server_loop import Collected

    run = FederatedRun(None, cfg, RunDir(tmp_path / "run"), run_id="t")
    run.sites = {n: nc["site"] for n, nc in nodes.items()}
    run.arrays = arrays
    run.sent = []

    def send(kind, round_no, to, *, arrays, group=None):
        got = Collected()
        for n in to:
            content = run._content(round_no, arrays=arrays)
            run.sent.append((kind, records_json(content)))
            msg = Message(content, dst_node_id=n, message_type=kind, group_id=str(round_no))
            ctx = Context(run_id=1, node_id=n, node_config=nodes[n], state=RecordDict(),
                          run_config={})  # fmt: skip
            reply = app(msg, ctx)
            if reply.has_error():
                got.failed[n] = reply.error.reason
            else:
                got.ok[n] = reply
        return got

    run._send = send
    return run


def records_json(content) -> str:
    return str(content["config"]["json"])


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    root = tmp_path_factory.mktemp("breslow")
    cohort = make_cohort(
        root / "all", n_patients=48, feature_dim=5, tiles=(3, 6), seed=5, two_slide_fraction=0.0
    )
    return split_into_sites(cohort, root, ["site_a", "site_b"])


def _setup(dirs: list[Path], tmp_path: Path, **overrides):
    import torch

    from pathfl.fl import fed_stats
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.site import handle, train_config
    from pathfl.fl.trust.records import state_to_arrays
    from pathfl.survival.train import build_model

    cfg = effective_config(
        {"loss": "cox", "model": "meanpool", "hidden_dim": 8, "time_grid_max": 20.0,
         "time_grid_cells": 16, "val_folds": 3, "seed": 1, "rounds": 2, **overrides}
    )  # fmt: skip
    nodes = {
        i + 1: {"site": d.name, "features": str(d / "features"),
                "clinical": str(d / "clinical.csv"), "audit-log": str(tmp_path / f"{d.name}.jsonl")}
        for i, d in enumerate(dirs)
    }  # fmt: skip
    moments = {nc["site"]: handle("query", nc, cfg, None)["moments"] for nc in nodes.values()}
    scaler = fed_stats.federated_scaler(moments, cfg)
    torch.manual_seed(0)
    model = build_model(train_config(cfg), feature_dim=5)
    run = _federated_run(cfg, nodes, state_to_arrays(model.state_dict())[1], tmp_path)
    run.scaler = scaler
    return run, nodes, model


def test_federated_breslow_equals_pooled_on_the_grid(two_sites, tmp_path) -> None:
    from pathfl.fl.site import load_site, train_config
    from pathfl.survival.train import predict

    run, nodes, model = _setup(two_sites, tmp_path)
    final = run.final_evaluation(2)  # the coordinator's last request wave
    fed = final["breslow"]
    assert "skipped" not in fed, fed
    assert [k for k, _ in run.sent] == ["evaluate", "evaluate"]  # no extra wave
    assert "server_opt" not in run.sent[0][1]
    assert fed["missing_sites"] == [] and 0.0 <= final["federated_c_index"] <= 1.0

    # pooled: every site's (same split) training bags, the same scaler, one naive Breslow on
    # event times rounded down to the grid's cell starts
    pooled = [b for nc in nodes.values() for b in load_site(nc, run.cfg).train]
    p = predict(model, run.scaler.apply(pooled), train_config(run.cfg), time_bins=None)
    starts = np.linspace(0.0, 20.0, 17)[:-1]
    floored = starts[np.searchsorted(starts, p.time, side="right") - 1]
    t_ref, h_ref = _naive_breslow(p.risk, p.event, floored)
    np.testing.assert_array_equal(fed["times"], t_ref)
    np.testing.assert_allclose(fed["cumhaz"], h_ref, rtol=1e-8, atol=0)
    assert fed["n_events"] == float(np.sum(p.event))
    assert set(fed["per_site"]) == {"site_a", "site_b"}
    # each site's own baseline differs from the federation's (different risk sets)
    assert fed["per_site"]["site_a"]["cumhaz"] != fed["cumhaz"]


def test_breslow_skipped_with_reasons(two_sites, tmp_path) -> None:
    from pathfl.fl import fed_breslow
    from pathfl.fl.fl_config import effective_config

    run, _, _ = _setup(two_sites, tmp_path, time_grid_max=0.0)
    final = run.final_evaluation(2)
    assert "time_grid_max" in final["breslow"]["skipped"]
    assert 0.0 <= final["federated_c_index"] <= 1.0  # the evaluation itself is unaffected
    cfg = run.cfg
    nll = effective_config({"loss": "nll", "time_grid_max": 5.0})
    assert "time bins" in fed_breslow.skip_reason(nll)
    assert "breslow: false" in fed_breslow.skip_reason({**cfg, "breslow": False})
    dp = effective_config({"loss": "cox", "dp": True, "dp_noise_multiplier": 1.0})
    assert "DP" in fed_breslow.skip_reason(dp)
    assert fed_breslow.baseline_of({"skipped": "x"}) is None
