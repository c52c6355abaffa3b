"""Score the federated model, the pooled and local-only baselines and the oracle on the
same patients: the validation part that every site kept out of training inside
`pathfl fl simulate` (fold 0 of ``val_folds``, reproduced here with the same function).

The baselines are trained here with the default `pathfl train` recipe
(:func:`pathfl.survival.cv.fit_one`) and the federation's model configuration, so that
per-patient predictions (hence bootstrap CIs and KM curves) exist for every model; the
federation gets the same optimisation budget (rounds × steps per round = the pooled budget).
Scores: Harrell's C over all validation pairs with a patient
bootstrap 95% CI; the within-site C (only pairs of patients of the same hospital — what the
federation itself reports); the C of each site's validation patients."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic

log = logging.getLogger(__name__)


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


def _site_bags(split: dict[str, Any], fl_cfg: dict[str, Any]) -> dict[str, tuple[list, list]]:
    """Each site's (train, validation) bags, split exactly as `pathfl fl simulate` did."""
    from pathfl.fl.site import split_bags
    from pathfl.survival.data import load_bags, load_clinical

    out = {}
    for name, s in sorted(split["sites"].items()):
        d = Path(s["dir"])
        bags = load_bags(d / "features", load_clinical(d / "clinical.csv", covariates=[]))
        out[name] = split_bags(bags, val_folds=int(fl_cfg["val_folds"]), seed=int(fl_cfg["seed"]))
    return out


def train_baselines(site_bags: dict[str, tuple[list, list]], fl_cfg: dict[str, Any]) -> dict:
    """Pooled and local-only models trained with the default `pathfl train` recipe
    (:func:`pathfl.survival.cv.fit_one`: own standardisation, own step budget), the model
    configuration of the federation. Returns {name: (model, TrainConfig, scaler, time_bins)}."""
    from pathfl.fl.site import train_config
    from pathfl.survival.cv import fit_one

    tcfg = train_config(fl_cfg)
    jobs = {f"local_{n}": tr for n, (tr, _) in site_bags.items()}
    jobs["pooled"] = [b for tr, _ in site_bags.values() for b in tr]
    models = {}
    for name, bags in jobs.items():
        fit = fit_one(bags, tcfg, seed=int(fl_cfg["seed"]))
        models[name] = (fit["model"], tcfg, fit["scaler"], fit["time_bins"])
        log.info("trained %s baseline on %d patients (%d steps)", name, len(bags),
                 int(fit["stats"]["steps"]))  # fmt: skip
    return models


def evaluate_models(
    config: Any, split: dict[str, Any], fl_run: Path | None, cohort: dict[str, Any]
) -> dict[str, Any]:
    """Train the baselines, predict with every model on the validation patients, write
    ``work/evaluation.json`` and ``work/val_predictions.csv``; return the summary (plus
    in-memory predictions for the report)."""
    import json

    import torch

    from pathfl.survival.run import load_run
    from pathfl.survival.train import predict

    if fl_run is None or not (Path(fl_run) / "model.pt").is_file():
        raise FileNotFoundError(f"{fl_run}: no federated model.pt")
    fl_cfg = json.loads((Path(fl_run) / "fl_config.json").read_text())["config"]
    fed_model, fed_tcfg, extras = load_run(fl_run)
    bins = extras.get("time_bins")
    site_bags = _site_bags(split, fl_cfg)
    bags = [b for _, va in site_bags.values() for b in va]
    models = {
        "federated": (fed_model, fed_tcfg, extras["scaler"], bins),  # the federation's scaler
        **train_baselines(site_bags, fl_cfg),
    }

    truth = _truth(config.cohort_dir, cohort)
    pids = [b.patient_id for b in bags]
    event = np.array([b.event for b in bags], int)
    time = np.array([b.time for b in bags], float)
    site = np.array([truth[p]["site"] for p in pids])
    preds: dict[str, np.ndarray] = {"oracle": np.array([truth[p]["risk"] for p in pids])}
    for name, (model, tcfg, scaler, tb) in models.items():
        preds[name] = np.asarray(predict(model, scaler.apply(bags), tcfg, time_bins=tb).risk, float)
    fed_bags = extras["scaler"].apply(bags)
    scores = {k: score(v, event, time, site, seed=config.seed) for k, v in preds.items()}
    # each local model on its own site's patients only (the federation's "local-only" number)
    own = np.zeros(len(bags))
    for n in site_bags:
        own[site == n] = preds[f"local_{n}"][site == n]
    own_score = score(own, event, time, site, seed=config.seed)
    attention: dict[str, np.ndarray] = {}
    fed_model.eval()
    with torch.no_grad():
        for b in fed_bags:
            out = fed_model(torch.as_tensor(np.asarray(b.features, np.float32)))
            attention[b.patient_id] = out.tile_scores.detach().cpu().numpy()
    fed_metrics = json.loads((Path(fl_run) / "metrics.json").read_text())
    locals_ = [scores[k]["c_index"] for k in scores if k.startswith("local_")]
    summary = {
        "n_val_patients": len(bags),
        "n_val_events": int(event.sum()),
        "n_train_patients": sum(len(tr) for tr, _ in site_bags.values()),
        "fl_config": {
            k: fl_cfg[k] for k in ("rounds", "val_folds", "seed", "model", "loss") if k in fl_cfg
        }
        | {"steps_per_round": fed_metrics.get("steps_per_round")},
        "models": scores,
        "local_own_site_c_index_within_site": own_score["c_index_within_site"],
        "local_only_mean_c_index": float(np.mean(locals_)),
        "simulate_reported_federated_c_index": fed_metrics.get("federated_c_index"),
    }
    write_json_atomic(config.work_dir / "evaluation.json", summary)
    _write_predictions(config.work_dir / "val_predictions.csv", pids, site, event, time, preds)
    summary.update(
        _bags=bags,
        _preds=preds,
        _attention=attention,
        _truth=truth,
        _event=event,
        _time=time,
        _site=site,
    )
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
                    *(f"{preds[n][i]:.12g}" for n in names),
                ]
            )
