"""The benchmark cohorts' tile oracle (pathfl.survival.cohorts.posterior_fraction)."""

from __future__ import annotations

import numpy as np
import pytest

from pathfl.survival.cohorts import planted_cohort, posterior_fraction


def test_posterior_fraction_without_tiles_is_the_prior_mean():
    # U(0, 0.5) prior and no evidence: the mean of the grid's midpoints, 0.25
    assert posterior_fraction(np.array([]), shift=1.5) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.45])
def test_posterior_fraction_recovers_the_fraction_from_many_tiles(p):
    rng = np.random.default_rng(int(p * 100))
    n = 20_000
    z = rng.normal(size=n) + 1.5 * (rng.random(n) < p)
    assert posterior_fraction(z, shift=1.5) == pytest.approx(p, abs=0.02)


def test_tiles_pull_the_estimate_their_way():
    signal, background = np.full(10, 1.5), np.zeros(10)
    assert posterior_fraction(signal, shift=1.5) > 0.25 > posterior_fraction(background, shift=1.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_tile_oracle_tracks_the_truth_better_with_more_tiles(seed):
    def corr(tiles: tuple[int, int]) -> float:
        c = planted_cohort(n_patients=60, feature_dim=8, tiles=tiles, seed=seed)
        assert c.tile_log_hazard is not None and c.tile_log_hazard.shape == (60,)
        return float(np.corrcoef(c.tile_log_hazard, c.log_hazard)[0, 1])

    many, few = corr((2000, 2000)), corr((4, 8))
    assert many > 0.97
    assert few < many - 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_signal_direction_is_the_direction_the_signal_lies_on(seed):
    c = planted_cohort(n_patients=90, feature_dim=16, tiles=(300, 300), seed=seed)
    d = c.signal_direction
    assert d is not None and d.shape == (16,)
    assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-12)
    means = np.stack([b.features.mean(axis=0) for b in c.bags]).astype(np.float64)
    sites = np.array([b.site for b in c.bags])
    # within a site the projection on the hidden direction ranks the true log-hazard
    # (the site's offset and scale change neither the order nor the sign)
    for s in c.sites:
        on = means[sites == s] @ d
        assert np.corrcoef(on, c.log_hazard[sites == s])[0, 1] > 0.9
    other = np.linalg.qr(np.column_stack([d, np.eye(16)[:, :1]]))[0][:, 1]  # ⟂ to d
    assert abs(np.corrcoef(means[sites == c.sites[0]] @ other,
                           c.log_hazard[sites == c.sites[0]])[0, 1]) < 0.5  # fmt: skip
