"""Local-only and pooled baselines for a simulated federation (only possible when one machine
holds every site's data), evaluated on exactly the same site validation parts and pair counts
as the federated model, with the same total number of epochs (``rounds × local_epochs``) and
the same time-bin cut points."""

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
    from pathfl.survival.data import load_bags, load_clinical

    out = []
    for spec in specs:
        bags = load_bags(spec.features, load_clinical(spec.clinical, covariates=[]))
        train, val = split_bags(bags, val_folds=int(cfg["val_folds"]), seed=int(cfg["seed"]))
        out.append(SiteData(spec.name, Path(spec.features), train, val, bags[0].feature_dim))
    return out


def _fit_eval(
    train_bags: list[Any], sites: list[SiteData], cfg: dict[str, Any], time_bins: np.ndarray
) -> dict[str, dict[str, float]]:
    from pathfl.survival.train import build_model, evaluate, train_local

    tcfg = train_config(cfg)
    model = build_model(tcfg, feature_dim=sites[0].feature_dim)
    epochs = int(cfg["rounds"]) * int(cfg["local_epochs"])
    train_local(model, train_bags, tcfg, epochs=epochs, time_bins=time_bins, seed=int(cfg["seed"]))
    return {s.site: evaluate(model, s.val, tcfg, time_bins=time_bins) for s in sites if s.val}


def _summary(per_site: dict[str, dict[str, float]]) -> dict[str, Any]:
    counts = [
        (m["n_concordant"], m["n_comparable"], m.get("n_tied_risk", 0.0)) for m in per_site.values()
    ]
    return {
        "federated_c_index": aggregate.federated_c_index(counts),
        "per_site_c_index": {k: float(m["c_index"]) for k, m in per_site.items()},
    }


def run_baselines(specs: list[Any], cfg: dict[str, Any], time_bins: list[float]) -> dict:
    """{"local_only": ..., "pooled": ...}: each with the C-index over the union of
    within-site validation pairs and the per-site C-indices."""
    import torch

    sites = load_sites(specs, cfg)
    bins = np.asarray(time_bins, dtype=float)
    local: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same as each federated site's worker
    try:
        for s in sites:
            local.update(_fit_eval(s.train, [s], cfg, bins))
        pooled = _fit_eval([b for s in sites for b in s.train], sites, cfg, bins)
    finally:
        torch.set_num_threads(threads)
    return {"local_only": _summary(local), "pooled": _summary(pooled)}


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
    for name in ("local_only", "pooled"):
        b = baselines[name]
        rows.append(
            {
                "method": name,
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
