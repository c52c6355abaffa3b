"""Survival curves from a federated Cox model: the Breslow baseline cumulative hazard,
computed in the federation after the last round (message kind ``query.breslow``).

The server sends the final global model; each site computes the log-risks of its own
(standardised) training patients and replies, per cell ``k = [e_k, e_{k+1})`` of the run's
event-time grid (``time_grid_max`` / ``time_grid_cells``, the grid of the check-in histogram;
follow-up beyond the grid in the last cell), two sums
(:func:`pathfl.survival.losses.breslow_sums`): ``events`` ``d_k`` (the same counts as its
event-time histogram) and ``exp_risk_sums`` ``s_k = Σ_{j at risk at e_k} exp(r_j)``. The server
adds them over the sites and takes ``H0`` jumping by ``Σd_k / Σs_k`` at ``e_k``
(:func:`pathfl.survival.losses.baseline_from_sums`): exactly the pooled Breslow estimate on
the union of the sites' training patients with event times rounded down to the grid — one
federation-wide baseline (the global model is not site-stratified; each site's own baseline,
from its own sums, is kept in metrics.json for reference). Stored as the run's
``breslow_baseline`` (config.json), the same slot ``pathfl train`` fills, so ``pathfl
predict --times`` gives ``S(t | x) = exp(-H0(t) · exp(r))`` for both.

Skipped (with a logged reason) with ``breslow: false``, for heads whose survival comes from
time bins (nll), when DP is on (the sums are exact functions of the training patients' risks,
not DP) and without a grid (``time_grid_max`` unset).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from pathfl.fl import aggregate
from pathfl.fl.server_loop import FederationError
from pathfl.fl.trust import records

logger = logging.getLogger(__name__)

RECORD = "breslow"  # the reply's named-array record: events, exp_risk_sums


def skip_reason(cfg: Mapping[str, Any]) -> str:
    """Why no federated Breslow baseline is computed in this run ('' = it is)."""
    from pathfl.fl.site import train_config
    from pathfl.fl.trust.privacy import DPConfig

    if not cfg.get("breslow", True):
        return "breslow: false in the run config"
    if train_config(cfg).head.survival != "breslow":
        return f"the {cfg['loss']} head gives survival functions from its time bins"
    if DPConfig.from_run_config(cfg).enabled:
        return "DP is on: the per-cell sums of exp(risk) are exact, not differentially private"
    if float(cfg.get("time_grid_max") or 0) <= 0:
        return "no event-time grid: set time_grid_max (longest follow-up, your time unit)"
    return ""


def grid_starts(cfg: Mapping[str, Any]) -> np.ndarray:
    """Left edges ``e_0 .. e_{K-1}`` of the run's grid cells."""
    edges = aggregate.time_grid(float(cfg["time_grid_max"]), int(cfg["time_grid_cells"]))
    return edges[:-1]


def site_sums(data: Any, cfg: Mapping[str, Any], arrays: list[np.ndarray]) -> dict[str, Any]:
    """A site's reply: the Breslow sums of the global model ``arrays`` on its training part."""
    from pathfl.fl.site import build_global_model, train_config
    from pathfl.survival.losses import breslow_sums
    from pathfl.survival.train import predict

    reason = skip_reason(cfg)
    if reason:
        raise ValueError(f"no Breslow sums for this run: {reason}")
    model = build_global_model(cfg, data.feature_dim, arrays)
    train = data.scaled(cfg)[0]
    p = predict(model, train, train_config(cfg), time_bins=None)
    d, s = breslow_sums(p.risk, p.event, p.time, grid_starts(cfg))
    metrics = {"num-examples": float(len(train)), "n_events": float(np.sum(p.event))}
    return {RECORD: {"events": d, "exp_risk_sums": s}, "metrics": metrics}


def combine(parts: Mapping[str, tuple[np.ndarray, np.ndarray]], starts: np.ndarray) -> dict:
    """The federation's baseline from every site's ``(d, s)``, and each site's own."""
    from pathfl.survival.losses import baseline_from_sums

    d = np.sum([p[0] for p in parts.values()], axis=0)
    s = np.sum([p[1] for p in parts.values()], axis=0)
    times, cumhaz = baseline_from_sums(d, s, starts)
    per_site = {}
    for site, (ds, ss) in parts.items():
        t, h = baseline_from_sums(ds, ss, starts)
        per_site[site] = {"times": t.tolist(), "cumhaz": h.tolist()}
    return {
        "times": times.tolist(),
        "cumhaz": cumhaz.tolist(),
        "n_events": float(d.sum()),
        "per_site": per_site,
    }


def fit(run: Any) -> dict[str, Any]:
    """The ``breslow`` entry of metrics.json for ``run`` (a
    :class:`pathfl.fl.coordinator.FederatedRun` after its rounds): the baseline, or
    ``skipped`` with the reason. A failed request wave is recorded, never fatal."""
    reason = skip_reason(run.cfg)
    if reason:
        logger.info("federated Breslow baseline skipped: %s", reason)
        return {"skipped": reason}
    try:
        replies = _ask(run)
        starts = grid_starts(run.cfg)
        parts = {s: _sums(a, len(starts), s) for s, (a, _) in replies.items()}
        result = combine(parts, starts)
    except (FederationError, KeyError, ValueError) as e:
        logger.warning("federated Breslow baseline failed: %s", e)
        run.audit.append("breslow_failed", reason=str(e))
        return {"skipped": f"failed: {e}"}
    result["grid"] = {"max": float(run.cfg["time_grid_max"]), "cells": len(starts)}
    run.audit.append("breslow", n_events=result["n_events"], sites=sorted(parts))
    n_events, cells = result["n_events"], len(starts)
    logger.info("federated Breslow baseline: %d event(s), %d-cell grid", n_events, cells)
    return result


def _ask(run: Any) -> dict[str, tuple[dict, dict]]:
    from pathfl.fl.fed_linear_cox import ask_every_site

    rounds = int(run.cfg["rounds"])
    return ask_every_site(
        run, records.BRESLOW, run.arrays, wave=rounds, group="breslow", record=RECORD
    )


def _sums(arrays: Mapping[str, np.ndarray], n_cells: int, site: str) -> tuple:
    d, s = (np.asarray(arrays[k], np.float64) for k in ("events", "exp_risk_sums"))
    if d.shape != (n_cells,) or s.shape != (n_cells,) or not np.all(np.isfinite(s)):
        raise ValueError(f"site {site!r} sent invalid Breslow sums ({d.shape}, {s.shape})")
    return d, s


def baseline_of(entry: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(times, H0)`` for :func:`pathfl.survival.run.save_run` (None when skipped)."""
    if not entry or "cumhaz" not in entry:
        return None
    return np.asarray(entry["times"], float), np.asarray(entry["cumhaz"], float)
