"""Pure federation functions against hand-computed numbers; FedProx through train_local;
run config and run-dir checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pytest

from pathfl.config import ConfigError
from pathfl.fl import aggregate
from pathfl.fl.fl_config import effective_config, policy_view
from pathfl.fl.rundir import RunDir


def test_weighted_average_hand_computed() -> None:
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[4.0]], np.float32)]
    out = aggregate.weighted_average([a, b], [10, 30])
    # (10*1 + 30*3)/40 = 2.5 ; (10*2 + 30*6)/40 = 5.0 ; (0*10 + 4*30)/40 = 3.0
    np.testing.assert_allclose(out[0], [2.5, 5.0])
    np.testing.assert_allclose(out[1], [[3.0]])
    assert out[0].dtype == np.float32


def test_weighted_average_three_sites_and_int_buffers() -> None:
    ups = [
        [np.array([0.0]), np.array([2])],
        [np.array([6.0]), np.array([4])],
        [np.array([9.0]), np.array([7])],
    ]
    out = aggregate.weighted_average(ups, [1, 1, 2])
    assert out[0][0] == pytest.approx((0 + 6 + 18) / 4)  # 6.0
    assert out[1].dtype == ups[0][1].dtype and out[1][0] == 5  # (2+4+14)/4 = 5


def test_weighted_average_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        aggregate.weighted_average([[np.zeros(2)], [np.zeros(3)]], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        aggregate.weighted_average([[np.zeros(2)], [np.zeros(2)]], [0, 0])
    with pytest.raises(ValueError, match="no updates"):
        aggregate.weighted_average([], [])


def test_median_and_trimmed_mean_hand_computed() -> None:
    ups = [
        [np.array([1.0, 9.0]), np.array([3])],
        [np.array([2.0, 7.0]), np.array([5])],
        [np.array([4.0, 8.0]), np.array([4])],
        [np.array([100.0, -50.0]), np.array([6])],
    ]
    med = aggregate.coordinate_median(ups)
    np.testing.assert_allclose(med[0], [3.0, 7.5])  # (2+4)/2, (7+8)/2
    assert med[1].dtype == ups[0][1].dtype and med[1][0] == 4  # (4+5)/2 = 4.5 -> rint = 4
    tm = aggregate.trimmed_mean(ups, trim_fraction=0.25)  # k = 1 of 4 dropped at each end
    np.testing.assert_allclose(tm[0], [3.0, 7.5])
    np.testing.assert_allclose(aggregate.trimmed_mean(ups, trim_fraction=0.0)[0], [26.75, -6.5])
    # 3 sites, 0.2: floor(0.6) = 0, nothing trimmed; 1/3 trims one at each end = the median
    three = ups[:3]
    np.testing.assert_allclose(aggregate.trimmed_mean(three, trim_fraction=0.2)[0], [7 / 3, 8.0])
    np.testing.assert_allclose(aggregate.trimmed_mean(three, trim_fraction=1 / 3)[0], [2.0, 8.0])
    with pytest.raises(ValueError, match="trim_fraction"):
        aggregate.trimmed_mean(ups, trim_fraction=0.5)
    with pytest.raises(ValueError, match="shape"):
        aggregate.coordinate_median([[np.zeros(2)], [np.zeros(3)]])


def test_robust_aggregation_bounds_one_poisoned_update() -> None:
    """Four honest sites agree (weights ≈ 1 ± 0.1); a fifth sends a finite update 1000x off
    with the largest patient count. FedAvg follows it; median and trimmed mean (k = 1 of 5)
    stay inside the honest range."""
    rng = np.random.default_rng(0)
    honest = [[1.0 + 0.1 * rng.standard_normal(50).astype(np.float32)] for _ in range(4)]
    poisoned = [np.full(50, 1000.0, np.float32)]
    ups, weights = [*honest, poisoned], [20, 20, 20, 20, 40]
    lo = np.min([h[0] for h in honest], axis=0)
    hi = np.max([h[0] for h in honest], axis=0)
    fedavg = aggregate.create_aggregator("fedavg")(ups, weights)[0]
    assert fedavg.min() > 300  # 40/120 of 1000
    for name in ("median", "trimmed-mean"):
        out = aggregate.create_aggregator(name, trim_fraction=0.2)(ups, weights)[0]
        assert out.dtype == np.float32
        assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6), name


def test_aggregator_registry_lists_names_and_refuses_unknown() -> None:
    from pathfl.registry import UnknownNameError

    assert {"fedavg", "median", "trimmed-mean"} <= set(aggregate.list_aggregators())
    with pytest.raises(UnknownNameError, match="fedavg, fedavgm, fedyogi, median, trimmed-mean"):
        aggregate.create_aggregator("krum")
    with pytest.raises(ConfigError, match="valid aggregations"):
        effective_config({"loss": "cox", "aggregation": "mean"})
    with pytest.raises(ConfigError, match="trim_fraction"):
        effective_config({"loss": "cox", "aggregation": "trimmed-mean", "trim_fraction": 0.6})


def test_federated_c_index_pools_pairs_not_indices() -> None:
    # site A: 9 of 10 pairs concordant (C=0.9); site B: 1 of 4 concordant + 2 tied (C=0.5)
    c = aggregate.federated_c_index([(9, 10, 0), (1, 4, 2)])
    assert c == pytest.approx((9 + 1 + 0.5 * 2) / 14)  # 0.7857, not mean(0.9, 0.5) = 0.7
    assert np.isnan(aggregate.federated_c_index([(0, 0, 0)]))


def test_federated_c_index_matches_concordance_counts_of_each_site() -> None:
    from pathfl.survival.metrics import concordance_counts

    rng = np.random.default_rng(0)
    counts, ev_all, t_all, r_all = [], [], [], []
    for _ in range(3):
        t = rng.exponential(5, 15)
        e = rng.integers(0, 2, 15)
        r = -t + rng.normal(0, 3, 15)
        counts.append(concordance_counts(e, t, r))
        ev_all.append(e), t_all.append(t), r_all.append(r)
    conc = sum(c[0] for c in counts)
    comp = sum(c[1] for c in counts)
    tied = sum(c[2] for c in counts)
    assert aggregate.federated_c_index(counts) == pytest.approx((conc + 0.5 * tied) / comp)


def test_time_bins_from_histogram() -> None:
    edges = aggregate.time_grid(4.0, 4)  # 0,1,2,3,4
    hist = aggregate.event_histogram(
        np.array([1.5, 1.2, 3.5, 3.9, 0.5, 9.0]), np.array([1, 1, 1, 1, 0, 0]), edges
    )
    np.testing.assert_array_equal(hist, [0, 2, 0, 2])  # censored times are not counted
    # median of the pooled distribution: 2 events in [1,2] then 2 in [3,4] -> cut at 2.0
    np.testing.assert_allclose(aggregate.cut_points_from_histogram(hist, edges, n_bins=2), [2.0])
    # quartiles interpolate inside the non-empty cells: 1.5, 2.0, 3.5
    np.testing.assert_allclose(
        aggregate.cut_points_from_histogram(hist, edges, n_bins=4), [1.5, 2.0, 3.5]
    )
    # summing two sites' histograms = histogram of the union
    h2 = aggregate.event_histogram(np.array([0.2, 0.7]), np.array([1, 1]), edges)
    np.testing.assert_array_equal(hist + h2, [2, 2, 0, 2])
    with pytest.raises(ValueError, match="events"):
        aggregate.cut_points_from_histogram(np.array([0, 1, 0, 0]), edges, n_bins=4)


def test_fedprox_term_keeps_weights_near_global() -> None:
    """train_local with proximal_mu > 0 (what federated sites run) moves less from the global
    weights than plain local training from the same start and seed."""
    import torch

    from pathfl.survival.data import PatientBag
    from pathfl.survival.train import TrainConfig, build_model, train_local

    rng = np.random.default_rng(0)
    bags = [
        PatientBag(
            f"P{i}",
            rng.normal(size=(12, 8)).astype(np.float32),
            float(rng.uniform(1, 9)),
            int(i % 2),
            None,
            [f"S{i}"],
            np.zeros(12, int),
            np.zeros((12, 2), int),
        )
        for i in range(16)
    ]
    cfg = TrainConfig(
        model="meanpool",
        loss="nll",
        n_bins=2,
        lr=0.05,
        epochs=3,
        seed=0,
        bags_per_batch=4,
        hidden_dim=16,
        dropout=0.0,
    )
    bins = np.array([5.0])

    def drift(mu: float) -> float:
        model = build_model(cfg, feature_dim=8)
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, bags, cfg, epochs=3, time_bins=bins, proximal_mu=mu, seed=1)
        return float(
            sum(
                ((p.detach() - s) ** 2).sum()
                for p, s in zip(model.parameters(), start, strict=True)
            )
        )

    free, prox = drift(0.0), drift(50.0)
    assert prox < 0.5 * free, (prox, free)
    torch.manual_seed(0)


def test_effective_config_validation() -> None:
    cfg = effective_config({"rounds": 2, "model": "meanpool", "time-grid-max": 30.0, "lr": 0.01})
    assert cfg["train"]["model"] == "meanpool" and cfg["train"]["lr"] == 0.01
    assert cfg["time_grid_max"] == 30.0 and cfg["proximal_mu"] == 0.0
    assert policy_view(cfg)["rounds"] == 2 and "lr" in policy_view(cfg)
    with pytest.raises(ConfigError, match="unknown"):
        effective_config({"roundz": 2, "time_grid_max": 1})
    with pytest.raises(ConfigError, match="time_bins"):
        effective_config({"loss": "nll"})
    with pytest.raises(ConfigError, match="increasing"):
        effective_config({"loss": "nll", "n_bins": 3, "time_bins": [5.0, 1.0]})
    assert effective_config({"loss": "cox"})["time_bins"] == []


def test_rundir_checkpoint_roundtrip(tmp_path) -> None:
    rd = RunDir(tmp_path)
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7], np.int64)]
    rd.save_checkpoint(round_no=2, names=["w", "n"], arrays=arrays, state={"time_bins": [1.0]})
    state, names, loaded = rd.load_checkpoint()
    assert state["round"] == 2 and state["time_bins"] == [1.0] and names == ["w", "n"]
    for a, b in zip(arrays, loaded, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    rd.append_round({"round": 1, "x": 1})
    rd.append_round({"round": 2, "x": 2})
    rd.append_round({"round": 2, "x": 3})  # a resumed run repeats round 2: replaced, not doubled
    assert [r["x"] for r in rd.read_rounds()] == [1, 3]


def test_strategy_names_the_aggregation_and_fedprox() -> None:
    from pathfl.fl.fl_config import strategy_name

    def name(aggregation: str, mu: float) -> str:
        cfg = {"aggregation": aggregation, "proximal_mu": mu, "time_grid_max": 10.0}
        return strategy_name(effective_config(cfg))

    assert name("fedavg", 0.0) == "fedavg"
    assert name("median", 0.0) == "median"
    assert name("trimmed-mean", 0.0) == "trimmed-mean"
    assert name("fedavg", 0.1) == "fedprox"
    assert name("median", 0.1) == "fedprox+median"


def test_run_timeout_counts_check_in_rounds_and_final_evaluation() -> None:
    from pathfl.fl.fl_config import run_timeout_s

    cfg = effective_config(
        {"rounds": 3, "connect_timeout_s": 10, "round_timeout_s": 7, "time_grid_max": 1.0}
    )
    assert run_timeout_s(cfg) == 10 + 5 * 7


def test_resume_takes_saved_settings_unless_given(tmp_path) -> None:
    from pathfl.config import ConfigError
    from pathfl.fl.rundir import Submission, resume_submission

    with pytest.raises(ConfigError, match=r"fl_config\.json"):
        resume_submission(tmp_path / "nowhere")
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    cfg = effective_config({"time_grid_max": 1.0})
    Submission(cfg, server="10.0.0.5:9093", root_cert=ca).save(tmp_path)
    saved = resume_submission(tmp_path)
    assert saved.config == cfg and saved.server == "10.0.0.5:9093"
    assert saved.root_cert == ca.resolve() and not saved.insecure
    saved.check()
    other = resume_submission(tmp_path, server="127.0.0.1:1", insecure=True)
    assert other.server == "127.0.0.1:1" and other.insecure
    with pytest.raises(ConfigError, match="--server"):
        Submission(cfg).check()
    with pytest.raises(ConfigError, match="--root-cert"):
        Submission(cfg, server="h:1", root_cert=tmp_path / "missing.crt").check()
