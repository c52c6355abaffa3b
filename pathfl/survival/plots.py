"""Kaplan–Meier figures as clinicians read them: one step curve per risk group with censoring
marks (+), the number at risk under the axis, the log-rank p, the time axis in the unit the
user stated, and risk groups split at a cut point fixed on training data (said in the title).
Heatmaps are in :mod:`pathfl.survival.heatmaps`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import atomic_path
from pathfl.survival.data import survival_array

logger = logging.getLogger(__name__)

GROUPS = (("low risk", "tab:blue"), ("high risk", "tab:red"))


def time_axis_label(time_unit: str) -> str:
    """``time (months)``; says so when the unit was never stated."""
    return f"time ({time_unit})" if time_unit else "time (unit not stated: set time_unit)"


def logrank(time: Any, event: Any, group: Any) -> dict[str, float]:
    """Log-rank test between groups (``sksurv.compare.compare_survival``); NaN when there is
    one group only or no event."""
    from sksurv.compare import compare_survival

    group, event = np.asarray(group), np.asarray(event).astype(bool)
    if len(np.unique(group)) < 2 or not event.any():
        return {"chisq": float("nan"), "p_value": float("nan")}
    try:
        chisq, p = compare_survival(survival_array(event, time), group)
    except ValueError as e:
        logger.warning("log-rank test failed: %s", e)
        return {"chisq": float("nan"), "p_value": float("nan")}
    return {"chisq": float(chisq), "p_value": float(p)}


def at_risk(time: Any, ticks: Any) -> list[int]:
    """Number at risk at each tick: patients whose follow-up time is ≥ the tick."""
    time = np.asarray(time, float)
    return [int((time >= t).sum()) for t in np.asarray(ticks, float)]


def split_at(risk: Any, cut: float) -> np.ndarray:
    """High-risk mask: risk above ``cut`` (a cut point fixed on training data)."""
    return np.asarray(risk, float) > float(cut)


@dataclass
class KMPanel:
    """One KM panel: patients' ``time``/``event``, the high-risk mask and how it was split."""

    name: str
    time: np.ndarray
    event: np.ndarray
    high: np.ndarray
    split_note: str = ""


def _km_curve(ax: Any, time: np.ndarray, event: np.ndarray, colour: str, label: str) -> None:
    """Step curve from S(0)=1, + at each censored time (on the curve)."""
    from sksurv.nonparametric import kaplan_meier_estimator

    t, s = kaplan_meier_estimator(event, time)
    t, s = np.r_[0.0, t], np.r_[1.0, s]
    ax.step(t, s, where="post", color=colour, label=label)
    cens = time[~event]
    if cens.size:
        level = s[np.searchsorted(t, cens, side="right") - 1]
        ax.plot(cens, level, "+", color=colour, ms=8, mew=1.2, ls="none")


def _draw_panel(ax: Any, table_ax: Any, panel: KMPanel, time_unit: str) -> dict[str, Any]:
    time = np.asarray(panel.time, float)
    event = np.asarray(panel.event).astype(bool)
    high = np.asarray(panel.high).astype(bool)
    groups = [(lab, col, m) for (lab, col), m in zip(GROUPS, (~high, high), strict=True)]
    for label, colour, m in groups:
        if m.any():
            n_ev = int(event[m].sum())
            n_text = f"n={int(m.sum())}, {n_ev} event{'' if n_ev == 1 else 's'}"
            _km_curve(ax, time[m], event[m], colour, f"{label} ({n_text})")
    test = logrank(time, event, high.astype(int))
    p = test["p_value"]
    p_text = f"log-rank p = {p:.2g}" if np.isfinite(p) else "log-rank p undefined"
    ax.set_title(f"{panel.name}\n{panel.split_note}; {p_text}".strip("; \n"), fontsize=9)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.plot([], [], "+", color="grey", label="censored")
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    table_ax.set_xlim(ax.get_xlim())
    table_ax.set_ylim(-0.5, len(groups) - 0.5)
    table_ax.set_xticks(ticks)
    table_ax.set_yticks(range(len(groups)), [g[0] for g in groups][::-1], fontsize=7)
    for row, (_, colour, m) in enumerate(groups[::-1]):
        table_ax.get_yticklabels()[row].set_color(colour)
        for t, n in zip(ticks, at_risk(time[m], ticks), strict=True):
            table_ax.text(t, row, str(n), ha="center", va="center", fontsize=7, color=colour)
    table_ax.tick_params(axis="y", length=0, pad=14)
    for side in ("top", "right", "left"):
        table_ax.spines[side].set_visible(False)
    table_ax.set_title("number at risk", fontsize=7, loc="left")
    table_ax.set_xlabel(time_axis_label(time_unit))
    ax.tick_params(labelbottom=False)
    return {**test, "n_low": int((~high).sum()), "n_high": int(high.sum())}


def km_panels(
    out_png: str | os.PathLike[str],
    panels: Sequence[KMPanel],
    *,
    time_unit: str = "",
    suptitle: str = "",
) -> list[dict[str, Any]]:
    """One column per panel: KM curves of the low/high risk groups over the number-at-risk
    table. Returns each panel's log-rank test and group sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(5.4 * len(panels), 5.4),
        dpi=120,
        squeeze=False,
        gridspec_kw={"height_ratios": [4, 1]},
    )
    results = [_draw_panel(axes[0, j], axes[1, j], p, time_unit) for j, p in enumerate(panels)]
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return results


def km_plot(
    time: Any,
    event: Any,
    high_risk: Any,
    out_png: str | os.PathLike[str],
    *,
    title: str = "Kaplan-Meier by risk group",
    time_unit: str = "",
    split_note: str = "",
) -> dict[str, Any]:
    """KM curves of low/high risk groups (one panel, :func:`km_panels`); returns the log-rank
    test and group sizes."""
    panel = KMPanel(title, np.asarray(time), np.asarray(event), np.asarray(high_risk), split_note)
    res = km_panels(out_png, [panel], time_unit=time_unit)[0]
    return {**res, "png": str(out_png)}
