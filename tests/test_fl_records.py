"""Only weights leave a site: every reply of pathfl's ClientApp (query, train, evaluate), made
by the real ClientApp on a real synthetic site, holds nothing but model arrays, the sample
count and whitelisted scalar metrics — no patient ids, slide ids, times or per-patient values.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pathfl.fl.trust import records

pytest.importorskip("flwr")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from pathfl.survival.synthetic import make_cohort

    root = tmp_path_factory.mktemp("site")
    cohort = make_cohort(root, n_patients=16, feature_dim=8, tiles=(5, 10), seed=3)
    return cohort


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Inside a flwr-clientapp process Flower sets the task identity; here we do."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _context(site, tmp_path):
    from flwr.app import Context, RecordDict

    node_config = {
        "site": "a",
        "features": str(site.features_dir),
        "clinical": str(site.clinical_csv),
        "audit-log": str(tmp_path / "audit.jsonl"),
    }
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _request(kind, cfg, arrays=None):
    from flwr.app import Message, RecordDict

    content = {"config": records.encode_config(cfg)}
    if arrays is not None:
        content["arrays"] = records.to_array_record(arrays)
    return Message(RecordDict(content), dst_node_id=7, message_type=kind, group_id="1")


def _secrets(site) -> tuple[list[bytes], list[float]]:
    import csv

    with open(site.clinical_csv) as f:
        rows = list(csv.DictReader(f))
    strings = [r[k].encode() for r in rows for k in ("patient_id", "slide_id")]
    times = [float(r["time"]) for r in rows]
    return strings, times


def _assert_nothing_personal(reply, site) -> None:
    content = reply.content
    strings, times = _secrets(site)
    blob = reply.deflate() + b"".join(r.deflate() for r in content.values())
    for s in strings:
        assert s not in blob, f"{s!r} leaked in the reply"
    for t in times:  # as float64 or float32 bytes anywhere in the payload
        assert struct.pack("<d", t) not in blob and struct.pack("<f", t) not in blob, t
    for name, rec in content.items():
        for key, value in getattr(rec, "items", lambda: [])():
            if name == "counts" and key == "time_hist":
                continue
            assert not isinstance(value, list), f"{name}.{key} is a list"


def test_client_app_replies_hold_only_whitelisted_content(site, tmp_path) -> None:
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.flower.client_app import app
    from pathfl.fl.site import build_global_model, load_site
    from pathfl.fl.trust.records import state_to_arrays

    cfg = effective_config(
        {"model": "meanpool", "time_grid_max": 30.0, "hidden_dim": 8, "val_folds": 4}
    )
    ctx = _context(site, tmp_path)

    q = app(_request("query", {**cfg, "round": 0}), ctx)
    assert not q.has_error(), q.error
    records.check_reply("query", q.content)
    assert set(q.content.keys()) == {"site", "counts", "moments"}
    _assert_nothing_personal(q, site)

    # the server's side of check-in: the scaler and row standardiser from the sites' sums
    from pathfl.fl import fed_stats

    parts = {"a": records.from_named_array_record(q.content["moments"])}
    assert set(parts["a"]) == records.MOMENT_KEYS - {"cov_n", "cov_sum", "cov_sumsq"}
    scaler, rows = fed_stats.federated_scaler(parts, cfg), fed_stats.row_standardizer(parts)
    data = load_site(ctx.node_config, cfg)
    run_cfg = {
        **cfg,
        "round": 1,
        "time_bins": [2.0, 5.0, 9.0],
        "scaler": scaler.to_dict(),
        "steps_per_round": 3,
        "linear_cox_rows": rows.to_dict(),
    }
    import torch

    torch.manual_seed(0)
    from pathfl.fl.site import train_config
    from pathfl.survival.train import build_model

    _, arrays = state_to_arrays(build_model(train_config(cfg), feature_dim=8).state_dict())
    t = app(_request("train", run_cfg, arrays), ctx)
    assert not t.has_error(), t.error
    assert set(t.content.keys()) == {"arrays", "metrics"}
    got = records.from_array_record(t.content["arrays"])
    assert [a.shape for a in got] == [a.shape for a in arrays]
    metrics = dict(t.content["metrics"])
    assert metrics["num-examples"] == len(data.train)
    assert set(metrics) <= records.REPLY_WHITELIST["train"]["metrics"][1]
    _assert_nothing_personal(t, site)

    e = app(_request("evaluate", run_cfg, got), ctx)
    assert not e.has_error(), e.error
    # a Cox run's evaluation also carries the Breslow sums: one value per grid cell
    assert set(e.content.keys()) == {"metrics", "breslow"}
    sums = records.from_named_array_record(e.content["breslow"])
    assert sums["events"].shape == sums["exp_risk_sums"].shape == (cfg["time_grid_cells"],)
    assert sums["events"].sum() == sum(b.event for b in data.train)
    assert 0.0 <= e.content["metrics"]["val_c_index"] <= 1.0
    _assert_nothing_personal(e, site)
    assert build_global_model(run_cfg, 8, got) is not None

    # one Newton step of the federated linear-cox: derivatives + validation pair counts only
    lc = app(_request(records.LINEAR_COX, run_cfg, [np.zeros(rows.dim)]), ctx)
    assert not lc.has_error(), lc.error
    records.check_reply(records.LINEAR_COX, lc.content)
    assert set(lc.content.keys()) == {"derivatives", "metrics"}
    der = records.from_named_array_record(lc.content["derivatives"])
    assert der["gradient"].shape == (8,) and der["hessian"].shape == (8, 8)
    assert lc.content["metrics"]["num-examples"] == len(data.train)
    _assert_nothing_personal(lc, site)

    # the site wrote its own audit log, one entry per request, and it verifies
    from pathfl.fl.trust.audit import verify

    assert verify(tmp_path / "audit.jsonl").ok


def test_check_reply_fails_closed() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    ok = RecordDict(
        {
            "arrays": ArrayRecord([np.zeros(2)]),
            "metrics": MetricRecord({"num-examples": 3, "val_c_index": 0.6}),
        }
    )
    records.check_reply("train", ok)
    bad = [
        RecordDict(
            {
                "arrays": ArrayRecord([np.zeros(2)]),
                "metrics": MetricRecord({"num-examples": 3, "risk": [0.1, 0.2]}),
            }
        ),
        RecordDict(
            {
                "arrays": ArrayRecord([np.zeros(2)]),
                "metrics": MetricRecord({"num-examples": 3, "val_risk_P0001": 0.2}),
            }
        ),
        RecordDict(
            {"arrays": ArrayRecord([np.zeros(2)]), "ids": ConfigRecord({"patient_id": "P0001"})}
        ),
        RecordDict(
            {"metrics": MetricRecord({"num-examples": 3}), "extra": ArrayRecord([np.zeros(2)])}
        ),
        RecordDict({"site": ConfigRecord({"site": "a", "patients": "P1,P2"})}),
        RecordDict({"moments": records.to_named_array_record({"times": np.ones(3)})}),
        RecordDict({"moments": records.to_named_array_record({"tile_n": np.ones(3, int)})}),
        RecordDict({"derivatives": records.to_named_array_record({"risk": np.ones(3)})}),
    ]
    kinds = ["train", "train", "train", "evaluate", "query", "query", "query", "query.linear_cox"]
    for kind, content in zip(kinds, bad, strict=True):
        with pytest.raises(records.ReplyNotAllowedError):
            records.check_reply(kind, content)


def test_dp_training_reports_epsilon_and_keeps_ledger(site, tmp_path) -> None:
    """With dp=true the ClientApp trains with DP-SGD; its reply carries ε (cumulative over
    rounds through the site-local ledger) and still nothing personal."""
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.flower.client_app import app
    from pathfl.fl.site import train_config
    from pathfl.fl.trust.records import state_to_arrays
    from pathfl.survival.train import build_model

    cfg = effective_config(
        {
            "model": "meanpool",
            "loss": "nll",  # DP-SGD needs a per-patient loss
            "time_grid_max": 30.0,
            "hidden_dim": 8,
            "dp": True,
            "dp_noise_multiplier": 1.0,
            "rounds": 2,
        }
    )
    ctx = _context(site, tmp_path)
    _, arrays = state_to_arrays(build_model(train_config(cfg), feature_dim=8).state_dict())
    eps = []
    for r in (1, 2):
        run_cfg = {**cfg, "round": r, "time_bins": [2.0, 5.0, 9.0], "run_id": "dp-test"}
        run_cfg["steps_per_round"] = 3  # fixed by the server at check-in
        reply = app(_request("train", run_cfg, arrays), ctx)
        assert not reply.has_error(), reply.error
        _assert_nothing_personal(reply, site)
        eps.append(reply.content["metrics"]["train_dp_epsilon"])
    assert 0 < eps[0] < eps[1]  # the second round spends more privacy budget
