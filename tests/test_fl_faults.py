"""Fault tests with real Flower processes on 127.0.0.1: a SuperLink and three SuperNodes
(one per synthetic site), started and stopped by PID through pathfl's LocalFederation.

* a site's policy refuses a run → the site's error reply and a ``refused`` audit entry; the
  run completes with the other sites (this run is also the resume test's reference);
* the aggregator (SuperLink + ServerApp process group) is SIGKILLed after round 1 →
  ``resume`` from the run dir's checkpoint gives the same final model as an uninterrupted run;
* one site is SIGKILLed mid-run → the run completes with the two others (3 → 2 sites);
* too few sites for ``min_sites`` → the run stops with a message, no hang.

One federation serves all tests of this module (starting one costs tens of seconds); the
site-kill tests run last because they destroy a site. TLS and site authentication are covered
by the federation tests; here they are off to keep the module cheap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROUND_TIMEOUT_S = 240.0  # generous: a loaded 2-core CI box needs ~40 s per site-round


def _cfg(**overrides):
    from pathfl.fl.fl_config import effective_config

    base = {
        "rounds": 2,
        "local_epochs": 1,
        "model": "meanpool",
        "loss": "nll",  # the discrete-time loss and its federation-wide time bins (and DP)
        "linear_cox": False,  # the Newton fit has its own test (test_fl_linear_cox_e2e.py)
        "hidden_dim": 8,
        "n_bins": 3,
        "time_grid_max": 40.0,
        "min_sites": 2,
        "num_sites": 3,
        "round_timeout_s": ROUND_TIMEOUT_S,
        "connect_timeout_s": 120.0,
        "val_folds": 0,
        "seed": 7,
    }
    return effective_config({**base, **overrides})


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    from pathfl.fl.flower.federation import LocalFederation
    from pathfl.fl.site import SiteSpec
    from pathfl.survival.synthetic import make_cohort

    work = tmp_path_factory.mktemp("faults")
    policy = work / "policy_c.yaml"
    policy.write_text("max_rounds: 5\nallowed_models: [meanpool]\n")
    specs = []
    for i, name in enumerate("abc"):
        c = make_cohort(work / "data" / name, n_patients=12, feature_dim=6, tiles=(4, 8), seed=i)
        specs.append(
            SiteSpec(name, c.features_dir, c.clinical_csv, policy=policy if name == "c" else None)
        )
    fed = LocalFederation(work / "fed", tls=False, auth=False)
    fed.start(specs)
    yield fed
    fed.stop()


def _wait_round(run_dir: Path, round_no: int, *, timeout_s: float) -> None:
    from pathfl.fl.rundir import RunDir

    rd = RunDir(run_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rd.checkpoint_state.exists() and rd.load_checkpoint()[0]["round"] >= round_no:
            return
        if rd.read_status().get("state") == "failed":
            raise AssertionError(f"run failed early: {rd.read_status()}")
        time.sleep(0.3)
    raise AssertionError(f"round {round_no} not checkpointed within {timeout_s} s")


def _follow(fed, rid, run_dir, timeout_s=900.0):
    from pathfl.fl.flower.federation import follow_run

    return follow_run(
        fed.home, rid, run_dir, timeout_s=timeout_s, superlink_log=fed.work / "logs/superlink.log"
    )


def _final_arrays(run_dir: Path) -> list[np.ndarray]:
    import torch

    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    return [v.numpy() for v in state.values()]


def _site_audit(fed, name: str) -> list[dict]:
    from pathfl.fl.trust.audit import AuditLog, verify

    path = fed.site_dir(name) / "audit.jsonl"
    assert verify(path).ok, verify(path).errors
    return AuditLog(path).entries()


def _assert_logs_agree(fed, run_dir: Path) -> None:
    """The server's audit log and the sites' own logs tell the same story (models received,
    updates aggregated) — `pathfl fl audit cross-check`."""
    from pathfl.fl.trust.audit import cross_check

    logs = {s: fed.site_dir(s) / "audit.jsonl" for s in "abc"}
    assert cross_check(run_dir / "audit.jsonl", logs) == []


def _abmil_cfg():
    """Config of the policy run, which is also the uninterrupted reference of the resume test
    (one run fewer): site c's policy allows only meanpool, so c refuses and a + b train. It
    aggregates with the coordinate-wise median (the robust option) through real processes."""
    return _cfg(rounds=2, model="abmil", attn_dim=4, aggregation="median")


@pytest.fixture(scope="module")
def refused_run(federation, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("policy") / "run"
    res = _follow(federation, federation.submit(_abmil_cfg(), run_dir), run_dir)
    return run_dir, res


def test_policy_refusal_end_to_end(federation, refused_run):
    """Site c's policy allows only the meanpool model; an abmil run is refused by c (error reply
    naming the rule + a ``refused`` entry in c's own audit log) and completes with a and b."""
    run_dir, res = refused_run
    assert res.get("state") == "completed", res
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2
    for row in rounds:
        assert sorted(row["sites"]) == ["a", "b"]
        assert "model 'abmil' not allowed" in row["failed"]["c"], row["failed"]
    assert json.loads((run_dir / "metrics.json").read_text())["aggregation"] == "median"
    refused = [e for e in _site_audit(federation, "c") if e["event"] == "refused"]
    assert refused and any("abmil" in r for r in refused[-1]["reason"])


def test_aggregator_killed_then_resume_matches_uninterrupted(federation, refused_run, tmp_path):
    """SIGKILL the SuperLink's process group (SuperLink + ServerApp) once round 1 is
    checkpointed, bring a SuperLink back on the same address and state database, resume:
    the final model equals the uninterrupted run's (the policy run, same config)."""
    from pathfl.fl.flower import processes
    from pathfl.fl.trust.audit import AuditLog, verify

    ref_dir, ref_res = refused_run
    assert ref_res.get("state") == "completed", ref_res
    run_dir = tmp_path / "run_killed"
    federation.submit(_abmil_cfg(), run_dir)
    _wait_round(run_dir, 1, timeout_s=2 * ROUND_TIMEOUT_S)
    old = federation.superlink
    old.kill()  # SIGKILL the SuperLink's process group: SuperLink + ServerApp
    assert not old.alive()
    assert not (run_dir / "model.pt").exists()
    federation.superlink = processes.start_process(
        "superlink",
        old.argv,
        log_path=federation.work / "logs" / "superlink-2.log",
        env=processes.flower_env(federation.home, **federation.env_extra),
    )
    processes.wait_port(federation.host, federation.port, timeout_s=120, proc=federation.superlink)
    rid = federation.submit(_abmil_cfg(), run_dir, resume=True)
    res = _follow(federation, rid, run_dir)
    assert res.get("state") == "completed", res

    ref, resumed = _final_arrays(ref_dir), _final_arrays(run_dir)
    assert len(ref) == len(resumed)
    for a, b in zip(ref, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert verify(run_dir / "audit.jsonl").ok
    events = [e["event"] for e in AuditLog(run_dir / "audit.jsonl").entries()]
    assert "resume" in events and events[-1] == "finish"
    _assert_logs_agree(federation, run_dir)


def test_site_killed_mid_run_completes_with_two(federation, tmp_path):
    """SIGKILL site c (its SuperNode and ClientApp processes) once round 1 is checkpointed:
    round 2 is aggregated from a and b, the run completes, c is reported missing/failed.
    The run also has client-side DP on, so it checks end to end that every site reports a
    cumulative ε that grows from round to round."""
    run_dir = tmp_path / "run_kill_site"
    rid = federation.submit(_cfg(rounds=2, dp=True, dp_noise_multiplier=1.0), run_dir)
    _wait_round(run_dir, 1, timeout_s=2 * ROUND_TIMEOUT_S)
    federation.sites["c"].kill()
    assert not federation.sites["c"].alive()
    res = _follow(federation, rid, run_dir)
    assert res.get("state") == "completed", res
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert sorted(rounds[0]["sites"]) == ["a", "b", "c"]
    assert sorted(rounds[1]["sites"]) == ["a", "b"]
    assert "c" in rounds[1]["missing"] or "c" in rounds[1]["failed"]
    for site in ("a", "b"):
        eps = [r["sites"][site]["train_dp_epsilon"] for r in rounds]
        assert 0 < eps[0] < eps[1] < float("inf"), eps
        assert rounds[1]["sites"][site]["train_dp_delta"] == pytest.approx(1e-5)
    from pathfl.fl.trust.audit import AuditLog, verify

    assert verify(run_dir / "audit.jsonl").ok
    last = [e for e in AuditLog(run_dir / "audit.jsonl").entries() if e["event"] == "round"][-1]
    assert last["sites"] == ["a", "b"]
    _assert_logs_agree(federation, run_dir)


def test_too_few_sites_stops_with_a_clear_message(federation, tmp_path):
    """With site c dead and min_sites=3 the run must stop with a message naming the problem,
    not wait forever."""
    federation.sites["c"].kill()  # already dead after the previous test; idempotent
    run_dir = tmp_path / "run_too_few"
    # a and b are connected, c is dead (offline since the previous test's round 2): waiting
    # longer for a third site cannot change the outcome, so a short wait keeps the test cheap
    cfg = _cfg(rounds=1, min_sites=3, connect_timeout_s=5.0)
    res = _follow(federation, federation.submit(cfg, run_dir), run_dir, timeout_s=600)
    assert res.get("state") == "failed", res
    assert "min_sites=3" in res.get("message", ""), res
    from pathfl.fl.trust.audit import AuditLog, verify

    assert verify(run_dir / "audit.jsonl").ok
    assert AuditLog(run_dir / "audit.jsonl").entries()[-1]["event"] == "failed"
