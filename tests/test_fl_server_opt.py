"""Server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad): two steps on two parameters
against numbers worked out by hand, the registry and run-config wiring, and the checkpoint
round trip a resumed run relies on."""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest

from pathfl.config import ConfigError
from pathfl.fl import aggregate, server_opt
from pathfl.fl.fl_config import aggregator_for, effective_config
from pathfl.fl.server_opt import OptState

W0 = [np.array([1.0, 2.0])]
D1 = [np.array([0.5, -1.0])]  # round 1 pseudo-gradient (average - global)
D2 = [np.array([-0.2, 0.4])]  # round 2


def test_fedavgm_two_steps_hand_computed() -> None:
    w1, s1 = server_opt.fedavgm_step(W0, D1, OptState(), server_lr=0.5, momentum=0.9)
    # m1 = D1 = [0.5, -1]; w1 = w0 + 0.5 m1 = [1.25, 1.5]
    np.testing.assert_allclose(w1[0], [1.25, 1.5], rtol=0, atol=1e-15)
    w2, s2 = server_opt.fedavgm_step(w1, D2, s1, server_lr=0.5, momentum=0.9)
    # m2 = 0.9 m1 + D2 = [0.25, -0.5]; w2 = w1 + 0.5 m2 = [1.375, 1.25]
    np.testing.assert_allclose(s2.m[0], [0.25, -0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(w2[0], [1.375, 1.25], rtol=0, atol=1e-15)
    assert s2.t == 2 and s2.v is None


def _two_adaptive_steps(rule: str) -> tuple[list, OptState, list, OptState]:
    kw = {"rule": rule, "server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    w1, s1 = server_opt.adaptive_step(W0, D1, OptState(), **kw)
    w2, s2 = server_opt.adaptive_step(w1, D2, s1, **kw)
    return w1, s1, w2, s2


def test_fedadam_two_steps_hand_computed() -> None:
    w1, s1, w2, s2 = _two_adaptive_steps("adam")
    # m1 = 0.1 D1 = [0.05, -0.1]; v1 = 0.01 D1² = [0.0025, 0.01]; sqrt(v1) = [0.05, 0.1]
    w1_hand = [1.0 + 0.1 * 0.05 / (0.05 + 1e-3), 2.0 + 0.1 * -0.1 / (0.1 + 1e-3)]
    np.testing.assert_allclose(w1[0], w1_hand, rtol=1e-13)
    np.testing.assert_allclose(s1.m[0], [0.05, -0.1], rtol=1e-13)
    np.testing.assert_allclose(s1.v[0], [0.0025, 0.01], rtol=1e-13)
    # m2 = 0.9 m1 + 0.1 D2 = [0.025, -0.05]; v2 = 0.99 v1 + 0.01 D2² = [0.002875, 0.0115]
    np.testing.assert_allclose(s2.m[0], [0.025, -0.05], rtol=1e-13)
    np.testing.assert_allclose(s2.v[0], [0.002875, 0.0115], rtol=1e-13)
    w2_hand = [
        w1_hand[0] + 0.1 * 0.025 / (sqrt(0.002875) + 1e-3),
        w1_hand[1] + 0.1 * -0.05 / (sqrt(0.0115) + 1e-3),
    ]
    np.testing.assert_allclose(w2[0], w2_hand, rtol=1e-13)


def test_fedyogi_two_steps_hand_computed() -> None:
    w1, s1, w2, s2 = _two_adaptive_steps("yogi")
    # v1 = 0 - 0.01 D1² sign(0 - D1²) = +0.01 D1² = [0.0025, 0.01] (as Adam from v0 = 0)
    np.testing.assert_allclose(s1.v[0], [0.0025, 0.01], rtol=1e-13)
    # v2 = v1 - 0.01 D2² sign(v1 - D2²): D2² = [0.04, 0.16] > v1, sign -1 → v1 + 0.01 D2²
    #    = [0.0025 + 0.0004, 0.01 + 0.0016] = [0.0029, 0.0116]  (Adam: [0.002875, 0.0115])
    np.testing.assert_allclose(s2.v[0], [0.0029, 0.0116], rtol=1e-13)
    w2_hand = [
        w1[0][0] + 0.1 * 0.025 / (sqrt(0.0029) + 1e-3),
        w1[0][1] + 0.1 * -0.05 / (sqrt(0.0116) + 1e-3),
    ]
    np.testing.assert_allclose(w2[0], w2_hand, rtol=1e-13)


def test_fedyogi_second_moment_shrinks_when_gradients_shrink() -> None:
    # v = [1, 1] and Δ² = [0.01, 4]: v - Δ² = [+, -] → v - 0.01 Δ² | v + 0.01 Δ²
    _, s = server_opt.adaptive_step(
        [np.zeros(2)],
        [np.array([0.1, 2.0])],
        OptState(t=1, m=(np.zeros(2),), v=(np.ones(2),)),
        rule="yogi",
        server_lr=0.1,
        beta1=0.9,
        beta2=0.99,
        tau=1e-3,
    )
    np.testing.assert_allclose(s.v[0], [1 - 0.0001, 1 + 0.04], rtol=1e-13)


def test_fedadagrad_two_steps_hand_computed() -> None:
    kw = {"rule": "adagrad", "server_lr": 0.1, "beta1": 0.0, "beta2": 0.0, "tau": 1e-3}
    w1, s1 = server_opt.adaptive_step(W0, D1, OptState(), **kw)
    w2, s2 = server_opt.adaptive_step(w1, D2, s1, **kw)
    # beta1 0: m = Δ; v1 = D1² = [0.25, 1]; v2 = v1 + D2² = [0.29, 1.16]
    w1_hand = [1.0 + 0.1 * 0.5 / (0.5 + 1e-3), 2.0 - 0.1 * 1.0 / (1.0 + 1e-3)]
    np.testing.assert_allclose(w1[0], w1_hand, rtol=1e-13)
    np.testing.assert_allclose(s2.v[0], [0.29, 1.16], rtol=1e-13)
    w2_hand = [
        w1_hand[0] - 0.1 * 0.2 / (sqrt(0.29) + 1e-3),
        w1_hand[1] + 0.1 * 0.4 / (sqrt(1.16) + 1e-3),
    ]
    np.testing.assert_allclose(w2[0], w2_hand, rtol=1e-13)


def test_registered_optimiser_averages_then_steps_and_keeps_dtypes() -> None:
    """Through the registry: two sites (10 and 30 patients) -> FedAvg -> FedAvgM step;
    float32 weights stay float32, an integer counter takes the average."""
    opt = aggregate.create_aggregator("fedavgm", server_lr=2.0, server_momentum=0.5)
    current = [np.array([1.0, 1.0], np.float32), np.array([4])]
    a = [np.array([2.0, 1.0], np.float32), np.array([6])]
    b = [np.array([2.0, 3.0], np.float32), np.array([10])]
    new, state = server_opt.server_update(opt, current, [a, b], [10, 30], OptState())
    # average = [2, 2.5], Δ = [1, 1.5]; w = 1 + 2Δ = [3, 4]; counter (60+300)/40 = 9
    np.testing.assert_allclose(new[0], [3.0, 4.0])
    assert new[0].dtype == np.float32 and new[1].dtype == current[1].dtype and new[1][0] == 9
    assert state.t == 1
    # a plain aggregator leaves the state alone and returns the average
    avg, same = server_opt.server_update(
        aggregate.create_aggregator("fedavg"), current, [a, b], [10, 30], state
    )
    np.testing.assert_allclose(avg[0], [2.0, 2.5])
    assert same is state


def test_registry_names_defaults_and_config_wiring() -> None:
    assert aggregate.list_aggregators() == [
        "fedadagrad",
        "fedadam",
        "fedavg",
        "fedavgm",
        "fedyogi",
        "median",
        "trimmed-mean",
    ]
    adam = aggregator_for(effective_config({"aggregation": "fedadam", "time_grid_max": 1.0}))
    assert (adam.rule, adam.server_lr, adam.beta1, adam.beta2, adam.tau) == (
        "adam",
        0.03,  # pathfl's default (Flower's 0.1 measured worse, docs/federation.md)
        0.9,
        0.99,
        1e-3,
    )
    yogi = aggregator_for(
        effective_config({"aggregation": "fedyogi", "server_lr": 0.05, "time_grid_max": 1.0})
    )
    assert (yogi.rule, yogi.server_lr, yogi.tau) == ("yogi", 0.05, 1e-3)
    avgm = aggregate.create_aggregator("fedavgm")
    assert (avgm.server_lr, avgm.momentum) == (1.0, 0.9)
    with pytest.raises(ConfigError, match="server_beta2"):
        effective_config({"aggregation": "fedadam", "server_beta2": 1.0, "time_grid_max": 1.0})
    with pytest.raises(ConfigError, match="server_lr"):
        effective_config({"aggregation": "fedavgm", "server_lr": 0, "time_grid_max": 1.0})


def test_state_checkpoint_round_trip(tmp_path) -> None:
    _, _, _, s2 = _two_adaptive_steps("adam")
    entry = server_opt.save_state(tmp_path, 2, s2)
    assert entry["server_opt"]["arrays"] == "rounds/server_opt_002.npz"
    back = server_opt.load_state(tmp_path, entry)
    assert back.t == 2
    np.testing.assert_array_equal(back.m[0], s2.m[0])
    np.testing.assert_array_equal(back.v[0], s2.v[0])
    # resuming from the restored state gives the same next step as never stopping
    kw = {"rule": "adam", "server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    w = [np.array([0.3, -0.7])]
    cont, _ = server_opt.adaptive_step(w, D1, s2, **kw)
    resumed, _ = server_opt.adaptive_step(w, D1, back, **kw)
    np.testing.assert_array_equal(cont[0], resumed[0])
    assert server_opt.save_state(tmp_path, 3, OptState()) == {}
    assert server_opt.load_state(tmp_path, {}) == OptState()


def test_state_stays_on_the_server(tmp_path) -> None:
    """What a request carries (the run config + global weights) holds no optimiser state."""
    import json

    from pathfl.fl.coordinator import FederatedRun
    from pathfl.fl.rundir import RunDir
    from pathfl.fl.trust import records

    cfg = effective_config({"aggregation": "fedadam", "time_grid_max": 1.0})
    run = FederatedRun(None, cfg, RunDir(tmp_path), run_id="r")
    _, _, _, run.opt_state = _two_adaptive_steps("adam")
    sent = json.dumps(run.run_config(3), default=str)
    assert "server_opt" not in sent and "0.002875" not in sent and "m_t" not in sent
    content = run._content(3, arrays=W0)
    assert set(content.keys()) == {"config", "arrays"}
    got = records.from_array_record(content["arrays"])
    assert len(got) == 1 and np.array_equal(got[0], W0[0])


def test_resume_restores_the_optimiser_state(tmp_path) -> None:
    """The coordinator's checkpoint of round 2 names the state file; the ServerApp's resume
    check gives a fresh run exactly that state."""
    from pathfl.fl.coordinator import FederatedRun
    from pathfl.fl.flower.server_app import _check_resume
    from pathfl.fl.rundir import RunDir

    cfg = effective_config({"aggregation": "fedyogi", "time_grid_max": 1.0})
    run = FederatedRun(None, cfg, RunDir(tmp_path), run_id="r")
    run.names, run.arrays = ["w"], W0
    _, _, _, run.opt_state = _two_adaptive_steps("yogi")
    run._save_checkpoint(2)
    state, names, _ = RunDir(tmp_path).load_checkpoint()
    assert state["server_opt"]["arrays"] == "rounds/server_opt_002.npz" and names == ["w"]
    fresh = FederatedRun(None, cfg, RunDir(tmp_path), run_id="r2")
    assert fresh.opt_state == OptState()
    _check_resume(fresh, state)
    assert fresh.opt_state.t == 2
    got, want = fresh.opt_state, run.opt_state
    for a, b in zip((*got.m, *got.v), (*want.m, *want.v), strict=True):
        np.testing.assert_array_equal(a, b)
