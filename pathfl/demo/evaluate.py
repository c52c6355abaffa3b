"""Score the federated, pooled and local-only models on the held-out patients of every site,
next to the oracle (the true risk the survival times were drawn from).

All models are scored on the *same* held-out patients, so their C-indices are comparable:
Harrell's C over all test pairs with a patient bootstrap 95% CI, the within-site C (only pairs
of patients of the same hospital — what the federation itself can measure), and per-site C."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic

log = logging.getLogger(__name__)


def find_runs(fl_run: Path, site_names: list[str]) -> dict[str, Path]:
    """Model run dirs written by `pathfl fl simulate`: the federated one (``fl_run`` itself)
    and the pooled / local-only baselines found below it (any folder holding ``model.pt``
    whose name says ``pooled`` or ``local`` + the site)."""
    runs: dict[str, Path] = {}
    if (fl_run / "model.pt").is_file():
        runs["federated"] = fl_run
    candidates = sorted(p.parent for p in fl_run.glob("*/model.pt"))
    candidates += sorted(p.parent for p in fl_run.glob("*/*/model.pt"))
    for d in candidates:
        rel = str(d.relative_to(fl_run)).lower()
        if "round" in rel or "checkpoint" in rel:
            continue
        if "pooled" in rel or "central" in rel:
            runs.setdefault("pooled", d)
        elif "local" in rel:
            for s in site_names:
                tail = rel.rsplit("/", 1)[-1]
                if tail.endswith(f"_{s.lower()}") or tail.endswith(f"site_{s.lower()}"):
                    runs.setdefault(f"local_{s}", d)
    return runs


def _truth(cohort_dir: Path, cohort: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per patient: true risk and site; per slide: mask path, mpp."""
    out: dict[str, dict[str, Any]] = {}
    for s in cohort["sites"].values():
        with open(cohort_dir / s["dir"] / "truth.csv", newline="") as f:
            for r in csv.DictReader(f):
                p = out.setdefault(
                    r["patient_id"],
                    {"risk": float(r["true_risk"]), "site": r["site"], "slides": {}},
                )
                p["slides"][r["slide_id"]] = {
                    "mask": cohort_dir / s["dir"] / r["mask"],
                    "mask_um_per_px": float(r["mask_um_per_px"]),
                    "fraction": float(r["slide_phenotype_fraction"]),
                }
    return out


def score(
    risk: np.ndarray,
    event: np.ndarray,
    time: np.ndarray,
    site: np.ndarray,
    *,
    seed: int,
    n_boot: int = 500,
) -> dict[str, Any]:
    """C-index of ``risk`` over all pairs (+ bootstrap CI), within-site pairs, per site."""
    from pathfl.survival.metrics import (
        bootstrap_ci,
        c_index_from_counts,
        concordance_counts,
    )

    def c_all(idx: np.ndarray) -> float:
        return c_index_from_counts(*concordance_counts(event[idx], time[idx], risk[idx]))

    n = len(risk)
    conc, comp, tied = concordance_counts(event, time, risk)
    lo, hi = bootstrap_ci(c_all, n, n_boot=n_boot, seed=seed)
    within = np.zeros(3)
    per_site: dict[str, float] = {}
    for s in sorted(set(site.tolist())):
        m = site == s
        counts = np.array(concordance_counts(event[m], time[m], risk[m]), float)
        within += counts
        per_site[str(s)] = c_index_from_counts(*counts)
    return {
        "c_index": c_index_from_counts(conc, comp, tied),
        "ci95": [lo, hi],
        "comparable_pairs": int(comp),
        "c_index_within_site": c_index_from_counts(*within),
        "comparable_pairs_within_site": int(within[1]),
        "per_site": per_site,
    }


def evaluate_models(
    config: Any, split: dict[str, Any], fl_run: Path | None, cohort: dict[str, Any]
) -> dict[str, Any]:
    """Predict with every model on the held-out patients; write ``work/evaluation.json`` and
    ``work/test_predictions.csv``; return the summary (plus in-memory predictions)."""
    import torch

    from pathfl.survival.data import load_bags, load_clinical
    from pathfl.survival.run import load_run
    from pathfl.survival.train import predict

    site_names = sorted(cohort["sites"])
    runs = find_runs(Path(fl_run), site_names) if fl_run else {}
    if "federated" not in runs:
        raise FileNotFoundError(f"{fl_run}: no federated model.pt found")
    clinical = load_clinical(split["test_clinical"])
    bags = load_bags(split["features_dir"], clinical)
    truth = _truth(config.cohort_dir, cohort)
    pids = [b.patient_id for b in bags]
    event = np.array([b.event for b in bags], int)
    time = np.array([b.time for b in bags], float)
    site = np.array([truth[p]["site"] for p in pids])
    true_risk = np.array([truth[p]["risk"] for p in pids], float)

    models: dict[str, Any] = {"oracle": score(true_risk, event, time, site, seed=config.seed)}
    preds: dict[str, np.ndarray] = {"oracle": true_risk}
    attention: dict[str, np.ndarray] = {}
    for name, run_dir in runs.items():
        model, cfg, extras = load_run(run_dir)
        p = predict(model, bags, cfg, time_bins=extras.get("time_bins"))
        preds[name] = np.asarray(p.risk, float)
        models[name] = score(preds[name], event, time, site, seed=config.seed)
        models[name]["run_dir"] = str(run_dir)
        if name == "federated":
            model.eval()
            with torch.no_grad():
                for b in bags:
                    out = model(torch.as_tensor(np.asarray(b.features, np.float32)))
                    attention[b.patient_id] = out.tile_scores.detach().cpu().numpy()
    locals_ = [models[k]["c_index"] for k in models if k.startswith("local_")]
    summary = {
        "n_test_patients": len(bags),
        "n_test_events": int(event.sum()),
        "models": models,
        "local_only_mean_c_index": float(np.mean(locals_)) if locals_ else float("nan"),
        "missing_models": [
            k for k in ["pooled", *(f"local_{s}" for s in site_names)] if k not in runs
        ],
    }
    write_json_atomic(config.work_dir / "evaluation.json", summary)
    _write_predictions(config.work_dir / "test_predictions.csv", pids, site, event, time, preds)
    summary["_bags"] = bags
    summary["_preds"] = preds
    summary["_attention"] = attention
    summary["_truth"] = truth
    summary["_event"], summary["_time"], summary["_site"] = event, time, site
    return summary


def _write_predictions(
    path: Path,
    pids: list[str],
    site: np.ndarray,
    event: np.ndarray,
    time: np.ndarray,
    preds: dict[str, np.ndarray],
) -> None:
    from pathfl.io import atomic_path

    names = list(preds)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "site", "time", "event", *(f"risk_{n}" for n in names)])
        for i, p in enumerate(pids):
            w.writerow(
                [
                    p,
                    site[i],
                    f"{time[i]:.3f}",
                    int(event[i]),
                    *(f"{preds[n][i]:.6g}" for n in names),
                ]
            )
