"""Survival curves of a trained run on new patients (``pathfl predict --times``): ``S(t | x)``
at requested times from the run's survival function — a Cox run's stored Breslow baseline
(``pathfl train`` and ``pathfl fl`` runs alike: ``S = exp(-H0(t)·exp(r))``,
:func:`pathfl.survival.losses.cox_survival`) or an nll run's time bins — and the
survival-function metrics (integrated Brier score, time-dependent AUC) on patients with
outcomes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def parse_times(items: Sequence[str]) -> list[float]:
    """``["365", "730"]`` → ``[365.0, 730.0]``; each must be a finite number ≥ 0
    (:class:`ValueError` naming the bad item)."""
    out = []
    for item in items:
        try:
            t = float(item)
        except ValueError:
            raise ValueError(f"--times: {item!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"--times: {item!r} must be a finite time >= 0")
        out.append(t)
    return out


def column_name(t: float) -> str:
    """The predictions column of ``S(t | x)``: ``surv_365``, ``surv_0.5``."""
    return f"surv_{t:g}"


def survival_columns(pred: Any, times: Sequence[float]) -> list[dict[str, float]]:
    """Per patient of ``pred`` (:class:`pathfl.survival.train.Predictions`): ``{surv_<t>:
    S(t | x)}``. A run without a survival function → :class:`ValueError`."""
    if not times:
        return [{} for _ in pred.patient_ids]
    if pred.surv_fn is None:
        raise ValueError(
            "this run has no survival function (a Cox run saved without a Breslow baseline): "
            "retrain it with this version of pathfl to predict S(t)"
        )
    surv = np.asarray(pred.surv_fn(np.asarray(times, float)), float)
    names = [column_name(t) for t in times]
    return [dict(zip(names, map(float, row), strict=True)) for row in surv]


def curve_metrics(pred: Any) -> dict[str, Any]:
    """Integrated Brier score and mean time-dependent AUC of ``pred`` on its own outcomes, at
    the quartiles of its event times; the censoring distribution (IPC weights) is estimated on
    the same patients (no training data at hand). Empty when the run has no survival function."""
    from pathfl.survival.metrics import survival_metrics

    if pred.surv_fn is None:
        return {}
    m = survival_metrics(
        train_event=pred.event,
        train_time=pred.time,
        event=pred.event,
        time=pred.time,
        risk=pred.risk,
        surv_fn=pred.surv_fn,
        n_boot=0,
    )
    return {k: m[k] for k in ("integrated_brier", "mean_auc", "auc_times")}
