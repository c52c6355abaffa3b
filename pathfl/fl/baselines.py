"""Local-only and pooled baselines for a simulated federation (only possible when one machine
holds every site's data), evaluated on exactly the same site validation parts and pair counts
as the federated model. Each is fitted with the recipe ``pathfl train`` uses
(:func:`pathfl.survival.cv.fit_one`: a BagScaler fitted on its own training bags, its own time
bins, the default step budget for its size), and a pooled site-stratified ``linear-cox``
(:class:`pathfl.survival.linear_cox.LinearCox`) is fitted on the union of the sites' training
bags — what the federated Newton–Raphson fit must reproduce."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.fl.site import SiteData, one_torch_thread, split_bags, train_config
from pathfl.io import atomic_path

logger = logging.getLogger(__name__)


def load_sites(specs: list[Any], cfg: dict[str, Any]) -> list[SiteData]:
    from pathfl.fl.fed_stats import covariates_of
    from pathfl.survival.data import load_bags, load_clinical

    out = []
    cov = covariates_of(cfg)
    for spec in specs:
        bags = load_bags(
            spec.features, load_clinical(spec.clinical, covariates=cov), covariates=cov
        )
        train, val = split_bags(bags, val_folds=int(cfg["val_folds"]), seed=int(cfg["seed"]))
        out.append(SiteData(spec.name, Path(spec.features), train, val, bags[0].feature_dim))
    return out


def fit_baselines(sites: list[SiteData], cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``pathfl train``'s recipe (:func:`pathfl.survival.cv.fit_one`, the run's model
    configuration and seed) on each site's training part (``local_<site>``) and on the union
    of them (``pooled``): {name: fit_one's result (model, scaler, time_bins, stats, ...)}."""
    from pathfl.survival.cv import fit_one

    tcfg = train_config(cfg)
    jobs = {f"local_{s.site}": s.train for s in sites}
    jobs["pooled"] = [b for s in sites for b in s.train]
    fits = {}
    for name, bags in jobs.items():
        fits[name] = fit_one(bags, tcfg, seed=int(cfg["seed"]))
        logger.info("trained the %s baseline on %d patients (%d steps)", name, len(bags),
                    int(fits[name]["stats"]["steps"]))  # fmt: skip
    return fits


def _site_arrays(
    fit: dict[str, Any], sites: list[SiteData], cfg: dict[str, Any]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A :func:`fit_baselines` model's ``(event, time, risk)`` on each site's validation part."""
    from pathfl.survival.train import predict

    tcfg = train_config(cfg)
    out = {}
    for s in sites:
        if s.val:
            p = predict(fit["model"], fit["scaler"].apply(s.val), tcfg, time_bins=fit["time_bins"])
            out[s.site] = (np.asarray(p.event), np.asarray(p.time), np.asarray(p.risk))
    return out


def linear_cox_pooled(
    sites: list[SiteData], cfg: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``LinearCox`` on the rows of every site's training bags, one stratum per site; returns
    the fit (beta, iterations) and its ``(event, time, risk)`` on each site's validation rows."""
    from pathfl.survival.linear_cox import LinearCox, bag_rows

    order = sorted(sites, key=lambda s: s.site)
    bags = [b for s in order for b in s.train]
    strata = np.concatenate([np.full(len(s.train), i) for i, s in enumerate(order)])
    model = LinearCox(alpha_per_patient=train_config(cfg).linear_cox_alpha).fit(
        bag_rows(bags),
        time=np.array([b.time for b in bags], float),
        event=np.array([b.event for b in bags], int),
        strata=strata,
    )
    arrays = {
        s.site: (
            np.array([b.event for b in s.val], int),
            np.array([b.time for b in s.val], float),
            model.predict(bag_rows(s.val)),
        )
        for s in order
        if s.val
    }
    return {"beta": model.coef_.tolist(), "iterations": model.n_iter_}, arrays


def _summary(
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: dict[str, Any]
) -> dict[str, Any]:
    """The C-index over within-site validation pairs (with its basis and a stratified
    bootstrap CI, ``total``) and each site's (``per_site``; ``per_site_c_index`` the values)."""
    from pathfl.survival.metrics import stratified_c_summary

    total, per = stratified_c_summary(
        arrays, n_boot=train_config(cfg).n_boot, seed=int(cfg["seed"])
    )
    return {
        "federated_c_index": total["c_index"],
        "total": total,
        "per_site": per,
        "per_site_c_index": {k: float(m["c_index"]) for k, m in per.items()},
    }


def run_baselines(specs: list[Any], cfg: dict[str, Any]) -> dict:
    """{"local_only": ..., "pooled": ..., "linear_cox_pooled": ...}: each with the C-index
    over the union of within-site validation pairs and the per-site C-indices."""
    sites = load_sites(specs, cfg)
    local: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    with one_torch_thread():
        fits = fit_baselines(sites, cfg)
        for s in sites:
            local.update(_site_arrays(fits[f"local_{s.site}"], [s], cfg))
        pooled = _site_arrays(fits["pooled"], sites, cfg)
    lc_fit, lc_arrays = linear_cox_pooled(sites, cfg)
    return {
        "local_only": _summary(local, cfg),
        "pooled": _summary(pooled, cfg),
        "linear_cox_pooled": {**_summary(lc_arrays, cfg), **lc_fit},
    }


FED_NO_CI = "no CI: sites share pair counts only"


def federated_entry(per_site: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``total``/``per_site`` of a federated result from the sites' ``val_*`` metrics (pair
    counts, patients, events; no patient-level data, hence no bootstrap CI)."""
    from pathfl.survival.metrics import c_index_from_counts

    per = {
        k: {f: m.get(f"val_{f}") for f in ("c_index", "n_samples", "n_events", "n_comparable")}
        for k, m in per_site.items()
        if "val_n_comparable" in m
    }
    tot = {
        f: float(sum(float(m.get(f"val_{f}", 0.0)) for m in per_site.values()))
        for f in ("n_concordant", "n_comparable", "n_tied_risk", "n_samples", "n_events")
    }
    tot["c_index"] = c_index_from_counts(
        tot["n_concordant"], tot["n_comparable"], tot["n_tied_risk"]
    )
    return {"total": tot, "per_site": per}


def comparison_rows(federated: dict[str, Any], baselines: dict[str, Any]) -> list[dict]:
    """One row per method: ``method``, ``total`` (C over within-site validation pairs with its
    basis) and ``per_site`` ({site: metrics}) — the fields :func:`format_c_index` prints."""
    rows = [{"method": "federated", **federated_entry(federated.get("final_per_site", {}))}]
    lc = federated.get("linear_cox") or {}
    if lc.get("per_site_val"):
        rows.append({"method": "linear-cox (federated)", **federated_entry(lc["per_site_val"])})
    names = {
        "local_only": "local_only (each site's own model)",
        "pooled": "pooled",
        "linear_cox_pooled": "linear-cox (pooled, site-stratified)",
    }
    for key, label in names.items():
        if key in baselines and "total" in baselines[key]:
            b = baselines[key]
            rows.append({"method": label, "total": b["total"], "per_site": b["per_site"]})
    return rows


def write_comparison(path: Path, rows: list[dict]) -> str:
    """Write the comparison CSV (numbers: C, CI, patients, events, comparable pairs, overall
    and per site); return it as a Markdown table of :func:`format_c_index` cells."""
    from pathfl.survival.metrics import format_c_index

    sites = sorted({s for r in rows for s in r["per_site"]})
    fields = ("c_index", "ci_low", "ci_high", "n", "n_events", "n_comparable")

    def numbers(m: dict[str, Any]) -> list[Any]:
        lo, hi = m.get("c_index_ci95") or (float("nan"), float("nan"))
        n = m.get("n", m.get("n_samples"))
        return [m.get("c_index"), lo, hi, n, m.get("n_events"), m.get("n_comparable")]

    header = ["method"] + [
        f"{f}{suffix}" for suffix in ["", *(f"_{s}" for s in sites)] for f in fields
    ]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            cells = numbers(r["total"])
            for s in sites:
                cells += numbers(r["per_site"][s]) if s in r["per_site"] else [""] * len(fields)
            w.writerow([r["method"], *(f"{v:.4f}" if isinstance(v, float) else v for v in cells)])
    cols = ["method", "all sites (within-site pairs)", *sites]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        no_ci = FED_NO_CI if "federated" in r["method"] else "no CI"
        cells = [format_c_index(r["total"], no_ci=no_ci)]
        cells += [
            format_c_index(r["per_site"][s], no_ci=no_ci) if s in r["per_site"] else "—"
            for s in sites
        ]
        out.append("| " + " | ".join([r["method"], *cells]) + " |")
    return "\n".join(out) + "\n"
