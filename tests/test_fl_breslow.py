"""Breslow baseline hazard: the per-cell sums (hand-computed), the exact estimator as the
special case of one cell per event time, and the federated baseline — sites' replies through
the real site handler, reply whitelist and server combination — equal to the pooled Breslow
estimate on the same grid (1e-8)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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


class _StubRun:
    """What :func:`pathfl.fl.fed_breslow.fit` uses of a FederatedRun, answering each request
    with the real site handler and the ClientApp's reply whitelist (no network)."""

    def __init__(self, cfg: dict, nodes: dict[int, dict], arrays: list[np.ndarray]) -> None:
        self.cfg, self.nodes, self.arrays = cfg, nodes, arrays
        self.sites = {n: nc["site"] for n, nc in nodes.items()}
        self.audit = SimpleNamespace(events=[])
        self.audit.append = lambda event, **kw: self.audit.events.append((event, kw))
        self.sent: list[tuple[str, dict]] = []

    def _name(self, node: int) -> str:
        return self.sites[node]

    def _send(self, kind, wave, nodes, *, arrays, group):
        from flwr.app import MetricRecord, RecordDict

        from pathfl.fl.server_loop import Collected
        from pathfl.fl.site import handle
        from pathfl.fl.trust import records

        cfg = {**self.cfg, "round": wave}
        self.sent.append((kind, cfg))
        got = Collected()
        for n in nodes:
            out = handle(kind, self.nodes[n], cfg, arrays)
            content = RecordDict(
                {
                    "breslow": records.to_named_array_record(out["breslow"]),
                    "metrics": MetricRecord(out["metrics"]),
                }
            )
            records.check_reply(kind, content)
            got.ok[n] = SimpleNamespace(content=content)
        return got


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    root = tmp_path_factory.mktemp("breslow")
    cohort = make_cohort(
        root / "all", n_patients=48, feature_dim=5, tiles=(3, 6), seed=5, two_slide_fraction=0.0
    )
    return split_into_sites(cohort, root, ["site_a", "site_b"])


def _setup(dirs: list[Path], tmp_path: Path):
    import torch

    from pathfl.fl import fed_stats
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.site import handle, train_config
    from pathfl.fl.trust.records import state_to_arrays
    from pathfl.survival.train import build_model

    cfg = effective_config(
        {"loss": "cox", "model": "meanpool", "hidden_dim": 8, "time_grid_max": 20.0,
         "time_grid_cells": 16, "val_folds": 3, "seed": 1}
    )  # fmt: skip
    nodes = {
        i + 1: {"site": d.name, "features": str(d / "features"),
                "clinical": str(d / "clinical.csv"), "audit-log": str(tmp_path / f"{d.name}.jsonl")}
        for i, d in enumerate(dirs)
    }  # fmt: skip
    moments = {nc["site"]: handle("query", nc, cfg, None)["moments"] for nc in nodes.values()}
    cfg["scaler"] = fed_stats.federated_scaler(moments, cfg).to_dict()
    torch.manual_seed(0)
    model = build_model(train_config(cfg), feature_dim=5)
    return cfg, nodes, state_to_arrays(model.state_dict())[1], model


def test_federated_breslow_equals_pooled_on_the_grid(two_sites, tmp_path) -> None:
    from pathfl.fl import fed_breslow
    from pathfl.fl.site import load_site, train_config
    from pathfl.survival.scaling import BagScaler
    from pathfl.survival.train import predict

    cfg, nodes, arrays, model = _setup(two_sites, tmp_path)
    run = _StubRun(cfg, nodes, arrays)
    fed = fed_breslow.fit(run)
    assert "skipped" not in fed, fed
    assert [k for k, _ in run.sent] == ["query.breslow"]
    assert "server_opt" not in run.sent[0][1] and run.audit.events[0][0] == "breslow"

    # pooled: every site's (same split) training bags, the same scaler, one naive Breslow on
    # event times rounded down to the grid's cell starts
    scaler = BagScaler.from_dict(cfg["scaler"])
    pooled = [b for nc in nodes.values() for b in load_site(nc, cfg).train]
    p = predict(model, scaler.apply(pooled), train_config(cfg), time_bins=None)
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

    cfg, nodes, arrays, _ = _setup(two_sites, tmp_path)
    assert "time bins" in fed_breslow.skip_reason(
        effective_config({"loss": "nll", "time_grid_max": 5.0})
    )
    assert "time_grid_max" in fed_breslow.skip_reason({**cfg, "time_grid_max": 0.0})
    assert "breslow: false" in fed_breslow.skip_reason({**cfg, "breslow": False})
    dp = effective_config({"loss": "cox", "dp": True, "dp_noise_multiplier": 1.0})
    assert "DP" in fed_breslow.skip_reason(dp)
    run = _StubRun({**cfg, "time_grid_max": 0.0}, nodes, arrays)
    assert "skipped" in fed_breslow.fit(run) and not run.sent
    assert fed_breslow.baseline_of({"skipped": "x"}) is None
