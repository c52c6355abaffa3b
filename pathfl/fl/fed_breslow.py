"""Survival curves from a federated Cox model: the Breslow baseline cumulative hazard,
computed in the federation with the final evaluation (no extra request wave).

The server sends the final global model (the ``evaluate`` request); besides its validation
metrics each site computes the log-risks of its own (standardised) training patients and
replies, in the ``breslow`` array record, per cell ``k = [e_k, e_{k+1})`` of the run's
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


def site_part(model: Any, data: Any, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``breslow`` part of a site's ``evaluate`` reply: the Breslow sums of the global
    ``model`` on its training part (empty when the run computes no baseline)."""
    from pathfl.fl.site import train_config
    from pathfl.survival.losses import breslow_sums
    from pathfl.survival.train import predict

    if skip_reason(cfg) or not data.train:
        return {}
    p = predict(model, data.scaled(cfg)[0], train_config(cfg), time_bins=None)
    d, s = breslow_sums(p.risk, p.event, p.time, grid_starts(cfg))
    return {RECORD: {"events": d, "exp_risk_sums": s}}


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


def from_replies(run: Any, got: Any) -> dict[str, Any]:
    """The ``breslow`` entry of metrics.json from the final evaluation's replies ``got``
    (:class:`pathfl.fl.server_loop.Collected`) of ``run`` (a
    :class:`pathfl.fl.coordinator.FederatedRun`): the baseline, or ``skipped`` with the
    reason. It covers the sites that answered (those that did not are listed in
    ``missing_sites``: the baseline is then the one of the answering sites' patients); a
    failure is recorded, never fatal."""
    reason = skip_reason(run.cfg)
    if reason:
        logger.info("federated Breslow baseline skipped: %s", reason)
        return {"skipped": reason}
    starts = grid_starts(run.cfg)
    try:
        lacking = sorted(run._name(n) for n in (*got.failed, *got.missing))
        if not got.ok:
            raise FederationError(f"no final-evaluation reply from any site ({lacking})")
        parts = {
            run._name(n): _sums(r.content, len(starts), run._name(n)) for n, r in got.ok.items()
        }
        result = combine(dict(sorted(parts.items())), starts)
    except (FederationError, KeyError, ValueError) as e:
        logger.warning("federated Breslow baseline failed: %s", e)
        run.audit.append("breslow_failed", reason=str(e))
        return {"skipped": f"failed: {e}"}
    result["grid"] = {"max": float(run.cfg["time_grid_max"]), "cells": len(starts)}
    result["missing_sites"] = lacking
    if lacking:
        logger.warning("Breslow baseline without site(s) %s (no final-evaluation reply)", lacking)
    run.audit.append("breslow", n_events=result["n_events"], sites=sorted(parts))
    n_events, cells = result["n_events"], len(starts)
    logger.info("federated Breslow baseline: %d event(s), %d-cell grid", n_events, cells)
    return result


def _sums(content: Any, n_cells: int, site: str) -> tuple:
    if RECORD not in content:
        raise ValueError(f"site {site!r} sent no Breslow sums with its final evaluation")
    arrays = records.from_named_array_record(content[RECORD])
    d, s = (np.asarray(arrays[k], np.float64) for k in ("events", "exp_risk_sums"))
    if d.shape != (n_cells,) or s.shape != (n_cells,) or not np.all(np.isfinite(s)):
        raise ValueError(f"site {site!r} sent invalid Breslow sums ({d.shape}, {s.shape})")
    return d, s


def baseline_of(entry: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(times, H0)`` for :func:`pathfl.survival.run.save_run` (None when skipped)."""
    if not entry or "cumhaz" not in entry:
        return None
    return np.asarray(entry["times"], float), np.asarray(entry["cumhaz"], float)
