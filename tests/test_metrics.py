"""Metric wrappers agree with scikit-survival on fixed arrays; bootstrap CIs behave."""

from __future__ import annotations

import numpy as np
import pytest
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)

from pathfl.survival.data import survival_array
from pathfl.survival.metrics import (
    bootstrap_ci,
    c_index_from_counts,
    concordance_counts,
    eval_times,
    harrell_c,
    integrated_brier,
    survival_metrics,
    time_dependent_auc,
    uno_c,
)

RNG = np.random.default_rng(42)
N = 80
TIME = np.round(RNG.exponential(10, N), 1) + 0.1  # rounding creates tied times
EVENT = (RNG.random(N) < 0.6).astype(int)
RISK = np.round(-np.log(TIME) + RNG.normal(0, 1, N), 1)  # rounding creates tied risks
TR_TIME = RNG.exponential(10, 200) + 0.1
TR_EVENT = (RNG.random(200) < 0.6).astype(int)
TR_TIME[np.argmax(TR_TIME)] = TIME.max() + 5  # training follow-up covers the test set


def test_harrell_and_counts_equal_sksurv() -> None:
    c, conc, disc, tied, _ = concordance_index_censored(EVENT.astype(bool), TIME, RISK)
    assert harrell_c(EVENT, TIME, RISK) == pytest.approx(c)
    assert concordance_counts(EVENT, TIME, RISK) == (conc, conc + disc + tied, tied)
    assert tied > 0  # the fixture really has tied risks


def test_counts_sum_across_sites() -> None:
    a, b = slice(0, 40), slice(40, None)
    ca, cb = (
        concordance_counts(EVENT[a], TIME[a], RISK[a]),
        concordance_counts(EVENT[b], TIME[b], RISK[b]),
    )
    pooled = c_index_from_counts(*(x + y for x, y in zip(ca, cb, strict=True)))
    manual = (ca[0] + cb[0] + 0.5 * (ca[2] + cb[2])) / (ca[1] + cb[1])
    assert pooled == pytest.approx(manual)
    assert np.isnan(c_index_from_counts(0, 0, 0))
    assert concordance_counts([0, 0], [1, 2], [1, 2]) == (0, 0, 0)


def test_no_comparable_pair_counts_zero() -> None:
    # one event at t=5 after a censoring at t=3: no pair can be ordered (sksurv raises)
    assert concordance_counts([1, 0], [5.0, 3.0], [0.2, 0.1]) == (0, 0, 0)
    # a bootstrap resample of one event patient drawn twice: tied times, no pair either
    assert concordance_counts([1, 1], [4.0, 4.0], [0.3, 0.3]) == (0, 0, 0)
    assert np.isnan(harrell_c([1, 0], [5.0, 3.0], [0.2, 0.1]))


def test_stratified_summary_survives_sites_with_few_patients() -> None:
    """A site of 3 validation patients (1 comparable pair) next to a larger one: bootstrap
    resamples of the small site often have no comparable pair; they count zero pairs."""
    from pathfl.survival.metrics import stratified_c_summary

    rng = np.random.default_rng(0)
    t = rng.exponential(size=40)
    groups = {
        "big": (rng.integers(0, 2, 40), t, -t + rng.normal(scale=0.5, size=40)),
        "tiny": (np.array([1, 0, 0]), np.array([5.0, 3.0, 6.0]), np.array([0.9, 0.1, 0.5])),
    }
    total, per = stratified_c_summary(groups, n_boot=200, seed=1)
    assert per["tiny"]["n_comparable"] == 1 and per["tiny"]["n_concordant"] == 1
    assert total["n_comparable"] == per["big"]["n_comparable"] + 1
    lo, hi = total["c_index_ci95"]
    assert lo <= total["c_index"] <= hi


def test_uno_equals_sksurv() -> None:
    tr, te = survival_array(TR_EVENT, TR_TIME), survival_array(EVENT, TIME)
    tau = 20.0
    want = concordance_index_ipcw(tr, te, RISK, tau=tau)[0]
    assert uno_c(TR_EVENT, TR_TIME, EVENT, TIME, RISK, tau=tau) == pytest.approx(want)


def test_auc_and_brier_equal_sksurv() -> None:
    tr, te = survival_array(TR_EVENT, TR_TIME), survival_array(EVENT, TIME)
    times = eval_times(TR_TIME, TIME, EVENT)
    assert len(times) == 3 and times.min() > TIME.min() and times.max() < TIME.max()
    auc, mean_auc = time_dependent_auc(TR_EVENT, TR_TIME, EVENT, TIME, RISK, times)
    ref_auc, ref_mean = cumulative_dynamic_auc(tr, te, RISK, times)
    np.testing.assert_allclose(auc, ref_auc)
    assert mean_auc == pytest.approx(ref_mean)
    surv = np.exp(-np.outer(np.exp(RISK - RISK.mean()), times / 10))
    ref_ibs = integrated_brier_score(tr, te, surv, times)
    assert integrated_brier(TR_EVENT, TR_TIME, EVENT, TIME, surv, times) == pytest.approx(ref_ibs)
    assert np.isnan(integrated_brier(TR_EVENT, TR_TIME, EVENT, TIME, surv[:, :1], times[:1]))


def test_bootstrap_ci_deterministic_and_brackets_estimate() -> None:
    def stat(i: np.ndarray) -> float:
        return harrell_c(EVENT[i], TIME[i], RISK[i])

    lo, hi = bootstrap_ci(stat, N, n_boot=100, seed=3)
    assert (lo, hi) == bootstrap_ci(stat, N, n_boot=100, seed=3)
    assert lo < harrell_c(EVENT, TIME, RISK) < hi
    assert 0.0 < hi - lo < 0.5


def test_survival_metrics_bundle() -> None:
    m = survival_metrics(
        train_event=TR_EVENT,
        train_time=TR_TIME,
        event=EVENT,
        time=TIME,
        risk=RISK,
        surv_fn=lambda t: np.exp(-np.outer(np.exp(RISK - RISK.mean()), t / 10)),
        n_boot=50,
    )
    assert m["c_index"] == pytest.approx(harrell_c(EVENT, TIME, RISK))
    for key in ("uno_c", "mean_auc", "integrated_brier"):
        assert np.isfinite(m[key]), key
    assert m["c_index_ci95"][0] < m["c_index"] < m["c_index_ci95"][1]
