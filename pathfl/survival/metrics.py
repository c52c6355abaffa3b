"""Survival metrics: thin wrappers over scikit-survival plus bootstrap CIs and the Harrell pair
counts that federated evaluation sums across sites. Risk convention: higher = worse."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pathfl.survival.data import survival_array

logger = logging.getLogger(__name__)


def concordance_counts(event: Any, time: Any, risk: Any) -> tuple[int, int, int]:
    """Harrell pairs ``(n_concordant, n_comparable, n_tied_risk)`` as counted by
    ``sksurv.metrics.concordance_index_censored``; C = (concordant + 0.5·tied) / comparable, so
    sites can sum their counts to get the pooled C-index."""
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    event = np.asarray(event).astype(bool)
    if event.sum() == 0 or len(event) < 2:
        return 0, 0, 0
    try:
        with np.errstate(invalid="ignore", divide="ignore"):  # sksurv may compute 0/0; counts stay
            _, conc, disc, tied, _ = concordance_index_censored(
                event, np.asarray(time, dtype=float), np.asarray(risk, dtype=float)
            )
    except NoComparablePairException:  # e.g. the only event after every censoring: 0 pairs
        return 0, 0, 0
    return int(conc), int(conc + disc + tied), int(tied)


def c_index_from_counts(n_concordant: float, n_comparable: float, n_tied_risk: float) -> float:
    """Harrell C from (summed) pair counts; NaN when there is no comparable pair."""
    if n_comparable <= 0:
        return float("nan")
    return (n_concordant + 0.5 * n_tied_risk) / n_comparable


def harrell_c(event: Any, time: Any, risk: Any) -> float:
    """Harrell's C-index (NaN without a comparable pair)."""
    return c_index_from_counts(*concordance_counts(event, time, risk))


def uno_c(
    train_event: Any,
    train_time: Any,
    event: Any,
    time: Any,
    risk: Any,
    *,
    tau: float | None = None,
) -> float:
    """Uno's IPCW C-index; the censoring distribution is estimated on the training data.
    ``tau`` defaults to just below the training follow-up maximum so the IPC weights exist."""
    from sksurv.metrics import concordance_index_ipcw

    tr = survival_array(train_event, train_time)
    te = survival_array(event, time)
    if tau is None:
        tau = float(np.max(train_time)) * (1 - 1e-9)
    try:
        return float(concordance_index_ipcw(tr, te, np.asarray(risk, float), tau=tau)[0])
    except (ValueError, ZeroDivisionError) as e:
        logger.warning("Uno C-index undefined: %s", e)
        return float("nan")


def eval_times(
    train_time: Any, time: Any, event: Any, *, quantiles: Sequence[float] = (0.25, 0.5, 0.75)
) -> np.ndarray:
    """Evaluation times for time-dependent AUC / Brier: quantiles of the evaluation set's
    event times, restricted to the open range where both the evaluation follow-up and the
    training follow-up (needed for IPC weights) exist."""
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    ev_t = time[event] if event.any() else time
    lo = time.min()
    hi = min(time.max(), float(np.max(train_time)))
    t = np.unique(np.quantile(ev_t, quantiles))
    return t[(t > lo) & (t < hi)]


def time_dependent_auc(
    train_event: Any, train_time: Any, event: Any, time: Any, risk: Any, times: Any
) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC at ``times`` and its mean (``sksurv.cumulative_dynamic_auc``)."""
    from sksurv.metrics import cumulative_dynamic_auc

    times = np.asarray(times, float)
    if times.size == 0:
        return np.array([]), float("nan")
    try:
        auc, mean_auc = cumulative_dynamic_auc(
            survival_array(train_event, train_time),
            survival_array(event, time),
            np.asarray(risk, float),
            times,
        )
    except ValueError as e:
        logger.warning("time-dependent AUC undefined: %s", e)
        return np.full(times.shape, np.nan), float("nan")
    return np.asarray(auc, float), float(mean_auc)


def integrated_brier(
    train_event: Any, train_time: Any, event: Any, time: Any, surv: Any, times: Any
) -> float:
    """Integrated Brier score of survival probabilities ``surv (n, T)`` at ``times``
    (``sksurv.integrated_brier_score``; needs ≥ 2 times). NaN when undefined."""
    from sksurv.metrics import integrated_brier_score

    times = np.asarray(times, float)
    if times.size < 2 or surv is None:
        return float("nan")
    try:
        return float(
            integrated_brier_score(
                survival_array(train_event, train_time),
                survival_array(event, time),
                np.asarray(surv, float),
                times,
            )
        )
    except ValueError as e:
        logger.warning("integrated Brier score undefined: %s", e)
        return float("nan")


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(idx)`` over ``n`` patients resampled with
    replacement (``idx`` = resampled indices). NaN replicates are skipped."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n, size=n))
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 10):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


def survival_metrics(
    *,
    train_event: Any,
    train_time: Any,
    event: Any,
    time: Any,
    risk: Any,
    surv_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one evaluation set: Harrell C (+ counts, bootstrap CI), Uno C (+ CI),
    time-dependent AUC at quartiles of event times, integrated Brier score (if ``surv_fn``, a
    function ``times -> (n, T)`` survival probabilities, is given)."""
    event = np.asarray(event).astype(int)
    time, risk = np.asarray(time, float), np.asarray(risk, float)
    conc, comp, tied = concordance_counts(event, time, risk)
    out: dict[str, Any] = {
        "n": len(event),
        "n_events": int(event.sum()),
        "c_index": c_index_from_counts(conc, comp, tied),
        "n_concordant": conc,
        "n_comparable": comp,
        "n_tied_risk": tied,
        "uno_c": uno_c(train_event, train_time, event, time, risk),
    }
    times = eval_times(train_time, time, event)
    auc, mean_auc = time_dependent_auc(train_event, train_time, event, time, risk, times)
    out["auc_times"] = times.tolist()
    out["auc"] = auc.tolist()
    out["mean_auc"] = mean_auc
    surv = surv_fn(times) if surv_fn is not None and times.size >= 2 else None
    out["integrated_brier"] = integrated_brier(train_event, train_time, event, time, surv, times)
    if n_boot > 0:
        out["c_index_ci95"] = bootstrap_ci(
            lambda i: harrell_c(event[i], time[i], risk[i]), len(event), n_boot=n_boot, seed=seed
        )
        out["uno_c_ci95"] = bootstrap_ci(
            lambda i: uno_c(train_event, train_time, event[i], time[i], risk[i]),
            len(event),
            n_boot=n_boot,
            seed=seed,
        )
    return out


#: fewer comparable pairs than this and a C-index is shown as "—" (too few pairs to mean much)
MIN_COMPARABLE_PAIRS = 10


def c_index_summary(
    event: Any, time: Any, risk: Any, *, n_boot: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Harrell C with what it rests on: ``n``, ``n_events``, the pair counts and a percentile
    bootstrap 95 % CI (``c_index_ci95``; NaNs with fewer than :data:`MIN_COMPARABLE_PAIRS`
    comparable pairs or ``n_boot = 0``) — the fields :func:`format_c_index` prints."""
    event = np.asarray(event).astype(int)
    time, risk = np.asarray(time, float), np.asarray(risk, float)
    conc, comp, tied = concordance_counts(event, time, risk)
    ci = (float("nan"), float("nan"))
    if n_boot > 0 and comp >= MIN_COMPARABLE_PAIRS:
        ci = bootstrap_ci(
            lambda i: harrell_c(event[i], time[i], risk[i]), len(event), n_boot=n_boot, seed=seed
        )
    return {
        "c_index": c_index_from_counts(conc, comp, tied),
        "n": len(event),
        "n_events": int(event.sum()),
        "n_concordant": conc,
        "n_comparable": comp,
        "n_tied_risk": tied,
        "c_index_ci95": ci,
    }


def _first(m: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if m.get(k) is not None:
            return m[k]
    return None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and bool(np.isfinite(x))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_c_index(m: Mapping[str, Any], *, prefix: str = "", no_ci: str = "no CI") -> str:
    """The one way pathfl prints a C-index: ``0.712 (95% CI 0.60–0.81; 40 patients, 12 events,
    310 comparable pairs)``, or ``— (3 patients, 0 events, 0 comparable pairs)`` when it is
    undefined or rests on fewer than :data:`MIN_COMPARABLE_PAIRS` comparable pairs.

    ``m`` is a metrics dict (keys ``c_index``, ``n``/``n_samples``, ``n_events``,
    ``n_comparable``, ``c_index_ci95``/``ci95``; with ``prefix``, e.g. ``"val_"``, the keys
    of a site's metrics). ``no_ci`` says why a C without CI has none."""
    c = _first(m, f"{prefix}c_index")
    n = _first(m, f"{prefix}n", f"{prefix}n_samples")
    ev = _first(m, f"{prefix}n_events")
    pairs = _first(m, f"{prefix}n_comparable", "comparable_pairs")
    ci = _first(m, f"{prefix}c_index_ci95", f"{prefix}ci95")
    basis = [
        _plural(int(n), "patient") if _finite(n) else None,
        _plural(int(ev), "event") if _finite(ev) else None,
        _plural(int(pairs), "comparable pair") if _finite(pairs) else None,
    ]
    basis_text = ", ".join(b for b in basis if b)
    if not _finite(c) or (_finite(pairs) and pairs < MIN_COMPARABLE_PAIRS):
        short = f" < {MIN_COMPARABLE_PAIRS}" if _finite(pairs) and pairs > 0 else ""
        return f"— ({basis_text or 'no data'}{short})"
    if ci is not None and len(ci) == 2 and all(_finite(v) for v in ci):
        ci_text = f"95% CI {ci[0]:.2f}–{ci[1]:.2f}"
    else:
        ci_text = no_ci
    return f"{c:.3f} ({ci_text}; {basis_text})" if basis_text else f"{c:.3f} ({ci_text})"


def stratified_c_summary(
    groups: Mapping[str, tuple[Any, Any, Any]], *, n_boot: int = 200, seed: int = 0
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Harrell C over within-group pairs only (e.g. within-site pairs of a federation: the
    summed pair counts of each group's ``(event, time, risk)``) with its basis and a
    stratified bootstrap 95 % CI (patients resampled within each group); and each group's
    :func:`c_index_summary`. Returns ``(total, {group: summary})``."""
    data = {
        k: (np.asarray(e).astype(int), np.asarray(t, float), np.asarray(r, float))
        for k, (e, t, r) in groups.items()
    }
    per = {k: c_index_summary(*g, n_boot=n_boot, seed=seed) for k, g in data.items()}
    counts = np.array(
        [[m["n_concordant"], m["n_comparable"], m["n_tied_risk"]] for m in per.values()]
    )
    summed = counts.sum(axis=0) if len(counts) else np.zeros(3)
    ci = (float("nan"), float("nan"))
    if n_boot > 0 and summed[1] >= MIN_COMPARABLE_PAIRS:
        rng = np.random.default_rng(seed)
        vals = []
        for _ in range(n_boot):
            c = np.zeros(3)
            for e, t, r in data.values():
                if len(e) == 0:
                    continue
                i = rng.integers(0, len(e), size=len(e))
                c += concordance_counts(e[i], t[i], r[i])
            if c[1] > 0:
                vals.append(c_index_from_counts(*c))
        if len(vals) >= max(10, n_boot // 10):
            ci = tuple(float(v) for v in np.quantile(vals, [0.025, 0.975]))  # type: ignore[assignment]
    total = {
        "c_index": c_index_from_counts(*summed),
        "n": int(sum(m["n"] for m in per.values())),
        "n_events": int(sum(m["n_events"] for m in per.values())),
        "n_concordant": int(summed[0]),
        "n_comparable": int(summed[1]),
        "n_tied_risk": int(summed[2]),
        "c_index_ci95": ci,
    }
    return total, per
