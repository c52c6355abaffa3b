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

from pathfl.fl import aggregate
from pathfl.fl.site import SiteData, split_bags, train_config

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


def _scores(
    fit: dict[str, Any], sites: list[SiteData], cfg: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """A :func:`fit_baselines` model scored on each site's validation part."""
    from pathfl.survival.train import evaluate

    tcfg = train_config(cfg)
    out = {}
    for s in sites:
        if s.val:
            val = fit["scaler"].apply(s.val)
            out[s.site] = evaluate(fit["model"], val, tcfg, time_bins=fit["time_bins"])
    return out


def linear_cox_pooled(sites: list[SiteData], cfg: dict[str, Any]) -> dict[str, Any]:
    """``LinearCox`` on the rows of every site's training bags, one stratum per site; scored
    on each site's validation rows."""
    from pathfl.survival.linear_cox import LinearCox, bag_rows
    from pathfl.survival.metrics import c_index_from_counts, concordance_counts

    order = sorted(sites, key=lambda s: s.site)
    bags = [b for s in order for b in s.train]
    strata = np.concatenate([np.full(len(s.train), i) for i, s in enumerate(order)])
    model = LinearCox(alpha_per_patient=train_config(cfg).linear_cox_alpha).fit(
        bag_rows(bags),
        time=np.array([b.time for b in bags], float),
        event=np.array([b.event for b in bags], int),
        strata=strata,
    )
    per_site: dict[str, dict[str, float]] = {}
    for s in order:
        if s.val:
            ev = np.array([b.event for b in s.val], int)
            conc, comp, tied = concordance_counts(
                ev, np.array([b.time for b in s.val], float), model.predict(bag_rows(s.val))
            )
            per_site[s.site] = {
                "c_index": c_index_from_counts(conc, comp, tied),
                "n_concordant": float(conc),
                "n_comparable": float(comp),
                "n_tied_risk": float(tied),
            }
    return {**_summary(per_site), "beta": model.coef_.tolist(), "iterations": model.n_iter_}


def _summary(per_site: dict[str, dict[str, float]]) -> dict[str, Any]:
    counts = [
        (m["n_concordant"], m["n_comparable"], m.get("n_tied_risk", 0.0)) for m in per_site.values()
    ]
    return {
        "federated_c_index": aggregate.federated_c_index(counts),
        "per_site_c_index": {k: float(m["c_index"]) for k, m in per_site.items()},
    }


def run_baselines(specs: list[Any], cfg: dict[str, Any]) -> dict:
    """{"local_only": ..., "pooled": ..., "linear_cox_pooled": ...}: each with the C-index
    over the union of within-site validation pairs and the per-site C-indices."""
    import torch

    sites = load_sites(specs, cfg)
    local: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same as each federated site's worker
    try:
        fits = fit_baselines(sites, cfg)
        for s in sites:
            local.update(_scores(fits[f"local_{s.site}"], [s], cfg))
        pooled = _scores(fits["pooled"], sites, cfg)
    finally:
        torch.set_num_threads(threads)
    return {
        "local_only": _summary(local),
        "pooled": _summary(pooled),
        "linear_cox_pooled": linear_cox_pooled(sites, cfg),
    }


def comparison_rows(federated: dict[str, Any], baselines: dict[str, Any]) -> list[dict]:
    fed_sites = {
        k: float(v.get("val_c_index", float("nan")))
        for k, v in federated.get("final_per_site", {}).items()
    }
    rows = [
        {
            "method": "federated",
            "c_index": federated["federated_c_index"],
            **{f"c_index_{k}": v for k, v in sorted(fed_sites.items())},
        }
    ]
    lc = federated.get("linear_cox") or {}
    if "federated_c_index" in lc:
        rows.append(
            {
                "method": "linear-cox (federated)",
                "c_index": lc["federated_c_index"],
                **{f"c_index_{k}": v for k, v in sorted(lc["per_site_c_index"].items())},
            }
        )
    names = {
        "local_only": "local_only",
        "pooled": "pooled",
        "linear_cox_pooled": "linear-cox (pooled, site-stratified)",
    }
    for key, label in names.items():
        if key not in baselines:
            continue
        b = baselines[key]
        rows.append(
            {
                "method": label,
                "c_index": b["federated_c_index"],
                **{f"c_index_{k}": v for k, v in sorted(b["per_site_c_index"].items())},
            }
        )
    return rows


def write_comparison(path: Path, rows: list[dict]) -> str:
    """Write the comparison CSV; return it as a Markdown table."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| "
        + " | ".join(
            f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols
        )
        + " |\n"
        for r in rows
    )
    return head + body
