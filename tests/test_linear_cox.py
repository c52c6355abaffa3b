"""linear-cox: exact Newton fit of a ridge Cox model; per-stratum derivatives that sum to the
stratified pooled ones (what federated Newton relies on)."""

from __future__ import annotations

import numpy as np
import pytest

from pathfl.survival.linear_cox import (
    LinearCox,
    bag_rows,
    cox_derivatives,
    fit_newton,
)


def test_hand_computed_partial_likelihood_at_zero() -> None:
    # times 1, 2, 3 all events, beta = 0: risk sets of size 3, 2, 1
    x = np.array([[1.0], [0.0], [2.0]])
    ll, g, h = cox_derivatives(x, np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), np.zeros(1))
    assert ll == pytest.approx(-np.log(3) - np.log(2))
    # gradient: sum over events of x_i - mean of the risk set
    assert g[0] == pytest.approx((1 - 1.0) + (0 - 1.0) + (2 - 2.0))
    # Hessian: minus the sum of the risk sets' variances: var{1,0,2} + var{0,2} + var{2}
    assert h[0, 0] == pytest.approx(-(2 / 3 + 1.0 + 0.0))


def test_ties_use_breslow_risk_sets() -> None:
    x = np.array([[1.0], [0.0], [2.0]])
    t, e = np.array([1.0, 1.0, 3.0]), np.array([1, 1, 0])
    ll, _, _ = cox_derivatives(x, t, e, np.array([0.5]))
    w = np.exp(0.5 * x[:, 0])
    assert ll == pytest.approx(0.5 * 1 + 0.5 * 0 - 2 * np.log(w.sum()))


def test_derivatives_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    t = np.round(rng.exponential(size=40), 1) + 0.1  # rounded: many ties
    e = (rng.random(40) < 0.7).astype(int)
    b = rng.normal(size=3) * 0.3
    _, g, h = cox_derivatives(x, t, e, b)
    eps = 1e-6
    for i in range(3):
        d = np.eye(3)[i] * eps
        lp, gp, _ = cox_derivatives(x, t, e, b + d)
        lm, gm, _ = cox_derivatives(x, t, e, b - d)
        assert g[i] == pytest.approx((lp - lm) / (2 * eps), abs=1e-5)
        np.testing.assert_allclose(h[i], (gp - gm) / (2 * eps), atol=1e-5)


def test_equals_scikit_survival_coxph() -> None:
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4)) * [1, 10, 0.1, 3] + [0, 50, 0, 1]
    t = rng.exponential(np.exp(-x[:, 0])) + 0.01
    e = rng.random(80) < 0.8
    m = LinearCox(alpha_per_patient=0.2).fit(x, time=t, event=e)
    z = m.scaler_.transform(x)
    ref = CoxPHSurvivalAnalysis(alpha=0.2 * 80, ties="breslow", tol=1e-12).fit(
        z, Surv.from_arrays(e, t)
    )
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-6, atol=1e-9)
    assert m.n_iter_ < 20
    np.testing.assert_allclose(m.predict(x), z @ ref.coef_, rtol=1e-6, atol=1e-9)


def test_stratified_fit_is_the_sum_of_per_stratum_derivatives() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 3))
    t = rng.exponential(size=90) + 0.01
    e = (rng.random(90) < 0.6).astype(int)
    strata = np.repeat([0, 1, 2], 30)
    m = LinearCox(alpha_per_patient=0.1).fit(x, time=t, event=e, strata=strata)
    z = m.scaler_.transform(x).astype(float)

    def parts_at(beta):  # what three sites would reply
        return [
            cox_derivatives(z[strata == s], t[strata == s], e[strata == s], beta) for s in range(3)
        ]

    beta, _ = fit_newton(parts_at, 3, alpha=0.1 * 90)
    np.testing.assert_allclose(beta, m.coef_, rtol=1e-10)
    # stratification matters: the unstratified fit differs
    flat = LinearCox(alpha_per_patient=0.1).fit(x, time=t, event=e)
    assert not np.allclose(flat.coef_, m.coef_, rtol=1e-3)


def test_bag_rows_mean_pool_then_covariates() -> None:
    from pathfl.survival.cohorts import planted_cohort

    bags = planted_cohort(n_patients=3, feature_dim=4, tiles=(3, 6), seed=0).bags
    bags[0].covariates = np.array([7.0], np.float32)
    rows = bag_rows(bags[:1])
    np.testing.assert_allclose(rows[0, :4], bags[0].features.mean(0), rtol=1e-5, atol=1e-6)
    assert rows[0, 4] == 7.0
