"""Input standardisation: fitted on training patients only, from moments (so federated sums
give the pooled statistics), stored in the run and applied by predict/heatmap."""

from __future__ import annotations

import numpy as np
import pytest

from pathfl.survival.cohorts import planted_cohort
from pathfl.survival.scaling import (
    BagScaler,
    Standardizer,
    add_moments,
    moments,
    tile_moments,
)


def test_standardizer_hand_computed() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Standardizer.fit(x, columns=["a", "b"])
    assert s.mean == [2.0, 5.0]
    assert s.std == [1.0, 1.0]  # the constant column is centred, not divided by 0
    np.testing.assert_allclose(s.transform(x), [[-1.0, 0.0], [1.0, 0.0]])
    assert Standardizer.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="2 columns"):
        s.transform(np.zeros((1, 3)))


def test_moments_of_parts_equal_pooled_moments() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(loc=k, scale=1 + k, size=(20 + 7 * k, 5)) for k in range(3)]
    pooled = Standardizer.fit(np.concatenate(parts))
    summed = Standardizer.from_moments(add_moments([moments(p) for p in parts]))
    np.testing.assert_allclose(summed.mean, pooled.mean, rtol=1e-12)
    np.testing.assert_allclose(summed.std, pooled.std, rtol=1e-10)
    np.testing.assert_allclose(pooled.std, np.concatenate(parts).std(axis=0), rtol=1e-10)


def test_bag_scaler_uses_every_training_tile_and_round_trips() -> None:
    bags = planted_cohort(n_patients=12, feature_dim=6, tiles=(5, 30), seed=1).bags
    sc = BagScaler.fit(bags[:8], [])
    tiles = np.concatenate([b.features for b in bags[:8]]).astype(np.float64)
    np.testing.assert_allclose(sc.features.mean, tiles.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sc.features.std, tiles.std(0), rtol=1e-6)
    out = np.concatenate([b.features for b in sc.apply(bags[:8])])
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-5)
    # statistics come from the training bags only: the held-out bags are not centred
    held = np.concatenate([b.features for b in sc.apply(bags[8:])])
    assert not np.allclose(held.mean(0), 0, atol=1e-3)
    assert BagScaler.from_dict(sc.to_dict()) == sc
    n, s1, _ = tile_moments(bags[:8])
    assert n == len(tiles) and np.allclose(s1, tiles.sum(0))


def test_bag_scaler_reads_covariate_only_runs() -> None:
    old = {"columns": ["age"], "mean": [60.0], "std": [10.0]}  # config.json before features
    sc = BagScaler.from_dict(old)
    assert sc.columns == ["age"] and sc.features.dim == 0
    bags = planted_cohort(n_patients=2, feature_dim=3, tiles=(2, 3), seed=0).bags
    bags = [b for b in bags]
    for b in bags:
        b.covariates = np.array([70.0], np.float32)
    out = sc.apply(bags)
    assert out[0].covariates.tolist() == [1.0]
    np.testing.assert_array_equal(out[0].features, bags[0].features)  # untouched


def test_train_and_predict_apply_the_same_scaling(tmp_path) -> None:
    from pathfl.survival.cv import cross_validate
    from pathfl.survival.run import load_run
    from pathfl.survival.train import TrainConfig, predict

    bags = planted_cohort(n_patients=30, feature_dim=8, tiles=(5, 20), seed=2).bags
    for b in bags:  # a large offset: without the stored scaler predictions would differ
        b.features = b.features * 50 + 300
    cfg = TrainConfig(folds=1, epochs=1, min_steps=5, n_boot=0)
    cross_validate(bags, cfg, tmp_path / "run")
    model, cfg2, extras = load_run(tmp_path / "run")
    sc = extras["scaler"]
    np.testing.assert_allclose(
        sc.features.mean, np.concatenate([b.features for b in bags]).mean(0), rtol=1e-5
    )
    p_scaled = predict(model, sc.apply(bags), cfg2, time_bins=extras["time_bins"])
    p_raw = predict(model, bags, cfg2, time_bins=extras["time_bins"])
    assert not np.allclose(p_scaled.risk, p_raw.risk)
    # the heatmap path (one slide = one bag) applies the stored scaler too
    from pathfl.survival.inference import slide_tile_scores
    from pathfl.survival.synthetic import write_features_h5

    b = bags[0]
    h5 = tmp_path / "s.h5"
    write_features_h5(h5, b.features, b.coords, slide_id="s", encoder="benchmark")
    _, _, _, risk = slide_tile_scores(tmp_path / "run", h5)
    assert risk == pytest.approx(float(p_scaled.risk[0]), rel=1e-5, abs=1e-6)
