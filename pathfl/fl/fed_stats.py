"""Federation-wide statistics fixed at check-in, from sums the sites send in their ``query``
reply: the input scaler (:class:`pathfl.survival.scaling.BagScaler`, from tile-feature and
covariate moments), the linear-cox row standardiser (moments of the mean-pooled rows), and the
optimisation budget (optimizer steps per round).

Moments are ``(n, Σx, Σx²)`` in float64; the server adds them over the accepted sites, so the
fitted statistics are exactly those a pooled fit on the union of the sites' training bags
would give (up to float rounding of the summation order). What they reveal is documented in
docs/federation.md ("Federated standardisation").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pathfl.fl import aggregate
from pathfl.survival.scaling import BagScaler, Moments, Standardizer, add_moments

logger = logging.getLogger(__name__)

#: moment groups a site may send: tile features, covariates, linear-cox rows (the array
#: names are whitelisted in :data:`pathfl.fl.trust.records.MOMENT_KEYS`)
MOMENT_GROUPS = ("tile", "cov", "row")


def covariates_of(cfg: Mapping[str, Any]) -> list[str]:
    """The run's covariate columns (a TrainConfig key, in ``cfg["train"]``)."""
    return [str(c) for c in (cfg.get("train", {}).get("covariates") or [])]


def standardizes(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("train", {}).get("standardize", True))


def linear_cox_skip_reason(cfg: Mapping[str, Any]) -> str:
    """Why the federated linear-cox baseline is not fitted in this run ('' = it is)."""
    from pathfl.fl.trust.privacy import DPConfig

    if not cfg.get("linear_cox", True):
        return "linear_cox: false in the run config"
    if DPConfig.from_run_config(cfg).enabled:
        return (
            "DP is on: the linear-cox derivatives (gradient and Hessian sums) are exact, "
            "not differentially private, so they are not computed"
        )
    return ""


def _group(prefix: str, m: Moments) -> dict[str, np.ndarray]:
    n, s1, s2 = m
    return {
        f"{prefix}_n": np.array([float(n)], np.float64),
        f"{prefix}_sum": np.asarray(s1, np.float64),
        f"{prefix}_sumsq": np.asarray(s2, np.float64),
    }


def site_moments(train_bags: Sequence[Any], cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The sums a site sends at check-in, computed on its *raw* training bags: tile moments
    (when the run standardises features), covariate moments (when it uses covariates) and
    the moments of the linear-cox rows (when the linear-cox baseline is fitted)."""
    from pathfl.survival.linear_cox import bag_rows
    from pathfl.survival.scaling import covariate_moments, moments, tile_moments

    out: dict[str, np.ndarray] = {}
    if not train_bags:
        return out
    if standardizes(cfg):
        out.update(_group("tile", tile_moments(train_bags)))
    if covariates_of(cfg):
        out.update(_group("cov", covariate_moments(train_bags)))
    if not linear_cox_skip_reason(cfg):
        out.update(_group("row", moments(bag_rows(train_bags))))
    return out


def summed(parts: Mapping[str, Mapping[str, np.ndarray]], prefix: str) -> Moments | None:
    """Sum of one moment group over the sites (``parts``: site -> its arrays); None when no
    site sent it. A site that sent other groups but not this one is an error."""
    have = {s: p for s, p in parts.items() if f"{prefix}_n" in p}
    if not have:
        return None
    lacking = sorted(set(parts) - set(have))
    if lacking:
        raise ValueError(f"site(s) {lacking} sent no {prefix} moments")
    dims = {s: np.asarray(p[f"{prefix}_sum"]).shape for s, p in have.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"{prefix} moments of different lengths: {dims}")
    return add_moments(
        [
            (float(np.ravel(p[f"{prefix}_n"])[0]), p[f"{prefix}_sum"], p[f"{prefix}_sumsq"])
            for _, p in sorted(have.items())
        ]
    )


def federated_scaler(
    parts: Mapping[str, Mapping[str, np.ndarray]], cfg: Mapping[str, Any]
) -> BagScaler | None:
    """The BagScaler of the federation (None when the run neither standardises features nor
    uses covariates)."""
    tile, cov = summed(parts, "tile"), summed(parts, "cov")
    columns = covariates_of(cfg)
    if standardizes(cfg) and tile is None:
        raise ValueError("the run standardises features but no site sent tile moments")
    if columns and cov is None:
        raise ValueError(f"the run uses covariates {columns} but no site sent their moments")
    if tile is None and cov is None:
        return None
    feats = Standardizer.from_moments(tile) if tile is not None else Standardizer()
    covs = Standardizer.from_moments(cov, columns=columns) if cov is not None else Standardizer()
    return BagScaler(feats, covs)


def row_standardizer(parts: Mapping[str, Mapping[str, np.ndarray]]) -> Standardizer | None:
    """The linear-cox row standardiser (None when the sites sent no row moments)."""
    rows = summed(parts, "row")
    return None if rows is None else Standardizer.from_moments(rows)


def steps_per_round(cfg: Mapping[str, Any], n_train_total: int) -> int:
    """Optimizer steps each site takes per round: ``local_steps`` when set; 0 when
    ``local_epochs`` is set (each site then takes ``local_epochs`` passes over its own bags);
    else (auto) ``ceil(S / rounds)`` with ``S = total_steps(n_train_total)`` — the budget
    ``pathfl train`` gives a pooled cohort of that size, so rounds × steps = S."""
    from pathfl.fl.site import train_config
    from pathfl.survival.train import total_steps

    if int(cfg.get("local_steps") or 0) > 0:
        return int(cfg["local_steps"])
    if int(cfg.get("local_epochs") or 0) > 0:
        return 0
    budget = total_steps(int(n_train_total), train_config(cfg))
    return max(1, math.ceil(budget / int(cfg["rounds"])))


def site_steps(cfg: Mapping[str, Any], n_site_train: int) -> int:
    """The steps a site takes in one round (see :func:`steps_per_round`)."""
    from pathfl.fl.site import train_config
    from pathfl.survival.train import steps_per_pass

    fixed = int(cfg.get("steps_per_round") or 0)
    if fixed > 0:
        return fixed
    epochs = int(cfg.get("local_epochs") or 0)
    if epochs <= 0:
        raise ValueError("the request carries neither steps_per_round nor local_epochs")
    return epochs * steps_per_pass(int(n_site_train), train_config(cfg))


def round_span(cfg: Mapping[str, Any], round_no: int) -> tuple[float, float]:
    """The share ``((r-1)/R, r/R)`` of the learning-rate schedule that round ``r`` covers."""
    r, total = int(round_no), max(1, int(cfg["rounds"]))
    return (min(r - 1, total) / total, min(r, total) / total)


def time_bins(cfg: Mapping[str, Any], counts: Mapping[str, Mapping[str, Any]]) -> list[float]:
    """The run's inner time-bin cut points: none for a head without time bins, the configured
    ``time_bins``, else quantiles of the accepted sites' summed event-time histograms (on the
    grid ``time_grid_max`` / ``time_grid_cells``). A site without a valid histogram →
    :class:`ValueError`."""
    from pathfl.fl.site import train_config

    if not train_config(cfg).head.needs_time_bins:
        return []
    if cfg["time_bins"]:
        return [float(x) for x in cfg["time_bins"]]
    edges = aggregate.time_grid(float(cfg["time_grid_max"]), int(cfg["time_grid_cells"]))
    total = np.zeros(len(edges) - 1, dtype=np.int64)
    for site, c in counts.items():
        hist = np.asarray(c.get("time_hist", []), dtype=np.int64)
        if hist.shape != total.shape:
            raise ValueError(f"site {site!r} sent no/invalid event-time histogram")
        total += hist
    cuts = aggregate.cut_points_from_histogram(total, edges, n_bins=int(cfg["train"]["n_bins"]))
    logger.info("federation time-bin cut points: %s", np.round(cuts, 4).tolist())
    return [float(c) for c in cuts]
