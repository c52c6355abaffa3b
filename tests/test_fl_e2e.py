"""End-to-end federation as real processes on 127.0.0.1: SuperLink with TLS and SuperNode
authentication, three sites, three rounds, planted-signal features; an unregistered site is
refused. Every process started is stopped (checked by process group)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _group_gone(pgid: int) -> bool:
    """No process of the group runs (zombies have exited; tests/test_fl_processes.py checks
    group_running itself against ps)."""
    from pathfl.fl.flower.processes import group_running

    return not group_running(pgid)


def planted_sites(root: Path, names: list[str], *, n_patients: int) -> list[Path]:
    """One planted-signal cohort (a shared signal direction) split by patient into the sites
    ``names`` under ``root`` (also used by tests/test_fl_inprocess.py)."""
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    cohort = make_cohort(
        root / "all",
        n_patients=n_patients,
        feature_dim=8,
        tiles=(8, 20),
        seed=5,
        two_slide_fraction=0.0,
        max_signal_fraction=0.3,
        effect=4.0,
        signal_shift=3.0,
        censor_max=25.0,
    )
    return split_into_sites(cohort, root, names)


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory) -> list[Path]:
    """150 patients in 3 sites."""
    root = tmp_path_factory.mktemp("fl_sites")
    return planted_sites(root, ["hosp_a", "hosp_b", "hosp_c"], n_patients=150)


# Cox keeps this test's C-indices stable on small validation parts; the discrete-time loss
# and its federation-wide time bins run through real processes in tests/test_fl_faults.py and
# in-process in tests/test_fl_records.py.
FL_CFG = {
    "rounds": 3,
    "local_epochs": 2,
    "model": "meanpool",
    "loss": "cox",
    "lr": 0.005,
    "bags_per_batch": 8,
    "hidden_dim": 32,
    "dropout": 0.0,
    "val_folds": 3,
    "min_sites": 3,
    # the federated Newton fit (one message per site per iteration) and its equality with the
    # pooled fit are tested in tests/test_fl_linear_cox_e2e.py; here it would only repeat them
    "linear_cox": False,
    "round_timeout_s": 240,
    "connect_timeout_s": 180,
    "seed": 1,
}


def test_three_sites_three_rounds_tls_auth(three_sites, tmp_path) -> None:
    from pathfl.fl.flower.simulate import simulate, site_specs
    from pathfl.fl.rundir import RunDir
    from pathfl.fl.trust.audit import verify
    from pathfl.fl.trust.records import REPLY_WHITELIST
    from pathfl.survival.run import load_run

    out = tmp_path / "run"
    rounds_seen: list = []
    summary = simulate(site_specs(three_sites), FL_CFG, out, tls=True, on_round=rounds_seen.append)
    # progress: one RoundInfo per round as it finished; the run's report.html
    assert [(r.round, r.total, r.answered, r.n_sites) for r in rounds_seen] == [
        (i, 3, 3, 3) for i in (1, 2, 3)
    ]
    report = (out / "report.html").read_text()
    assert summary["report"] == str(out / "report.html")
    for needle in ("hosp_c", "comparable pairs", "3/3", "local_only", "verified", "weights SHA"):
        assert needle in report, needle

    # every Flower process (and its children) is gone
    assert summary["pids"] and all(_group_gone(p) for p in summary["pids"])

    # federated C-index from pooled pair counts is close to pooled training
    fed = summary["federated_c_index"]
    pooled = summary["baselines"]["pooled"]["federated_c_index"]
    assert fed >= pooled - 0.05, summary["table"]
    assert fed > 0.6, summary["table"]  # the planted signal is learned
    assert (out / "comparison.csv").is_file() and "local_only" in summary["table"]

    # a run dir `pathfl predict` can read
    _model, cfg, extras = load_run(out)
    assert cfg.model == "meanpool" and cfg.loss == "cox" and "time_bins" in extras
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "federated" and len(metrics["rounds"]) == 3
    assert sorted(metrics["sites"]) == ["hosp_a", "hosp_b", "hosp_c"]

    # per-round, per-site metrics; global model per round; checkpoint of the last round
    rows = RunDir(out).read_rounds()
    assert [r["round"] for r in rows] == [1, 2, 3]
    allowed = REPLY_WHITELIST["train"]["metrics"][1]
    for r in rows:
        assert set(r["sites"]) == {"hosp_a", "hosp_b", "hosp_c"}
        for m in r["sites"].values():
            assert m["status"] == "aggregated" and m["bytes_up"] > 0
            assert set(m) - {"status", "bytes_up"} <= allowed
        assert RunDir(out).round_arrays(r["round"]).is_file()
    assert RunDir(out).load_checkpoint()[0]["round"] == 3

    # hash-chained audit logs: the server's and each site's own
    assert verify(out / "audit.jsonl").ok
    for site in ("hosp_a", "hosp_b", "hosp_c"):
        log = out / "federation" / "sites" / site / "audit.jsonl"
        assert verify(log).ok
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert events.count("train") == 3 and "evaluate" in events


def test_unregistered_site_is_refused(three_sites, tmp_path) -> None:
    from pathfl.fl.flower import flower_cli
    from pathfl.fl.flower.federation import LocalFederation
    from pathfl.fl.site import SiteSpec
    from pathfl.fl.trust.certs import make_site_keys

    spec = SiteSpec("rogue", three_sites[0] / "features", three_sites[0] / "clinical.csv")
    with LocalFederation(tmp_path / "fed", tls=True, auth=True) as fed:
        fed.start([])
        key, _ = make_site_keys(fed.certs, "rogue")  # a key the server never registered
        proc = fed.start_site(spec, key=key)
        deadline = time.monotonic() + 120
        while proc.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not proc.alive(), "an unregistered SuperNode kept running"
        assert proc.popen.returncode != 0
        assert "Failed to activate SuperNode" in proc.log_tail(20000)
        nodes = flower_cli.flwr_cli(
            fed.home, ["supernode", "ls", flower_cli.CONNECTION, "--format", "json"]
        )
        assert json.loads(nodes[nodes.index("{") :]).get("nodes", []) == []
        pids = [fed.superlink.pid, proc.pid]
    assert all(_group_gone(p) for p in pids)
