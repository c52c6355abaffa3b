"""Score the federated model, the pooled and local-only baselines and the oracle on the
same patients: the validation part that every site kept out of training inside
`pathfl fl simulate` (fold 0 of ``val_folds``, reproduced here with the same function).

The baselines are trained here with the simulation's own baseline function
(:func:`pathfl.fl.baselines.fit_baselines`: the default `pathfl train` recipe,
:func:`pathfl.survival.cv.fit_one`, and the federation's model configuration), so that
per-patient predictions (hence bootstrap CIs and KM curves) exist for every model; the
federation gets the same optimisation budget (rounds × steps per round = the pooled budget).
Scores: Harrell's C over all validation pairs with a patient
bootstrap 95% CI; the within-site C (only pairs of patients of the same hospital — what the
federation itself reports); the C of each site's validation patients."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathfl.io import write_json_atomic

if TYPE_CHECKING:
    from pathfl.fl.site import SiteData
    from pathfl.survival.data import PatientBag

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What the evaluate stage computed: ``summary`` (the content of ``work/evaluation.json``)
    and, for the validation patients (in ``bags`` order), what the report draws from."""

    summary: dict[str, Any]
    bags: list[PatientBag]
    preds: dict[str, np.ndarray]  # model name (and "oracle") -> risk of each patient
    attention: dict[str, np.ndarray]  # patient id -> the federated model's tile scores
    truth: dict[str, dict[str, Any]]  # patient id -> true risk, site, slides (mask, fraction)
    event: np.ndarray
    time: np.ndarray
    site: np.ndarray


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
    """C-index of ``risk`` over all pairs, over within-site pairs and per site, each with its
    basis (patients, events, comparable pairs) and a bootstrap 95% CI (stratified by site for
    the within-site C): :func:`pathfl.survival.metrics.format_c_index` prints them."""
    from pathfl.survival.metrics import c_index_summary, stratified_c_summary

    overall = c_index_summary(event, time, risk, n_boot=n_boot, seed=seed)
    groups = {str(s): (event[site == s], time[site == s], risk[site == s]) for s in set(site)}
    within, per_site = stratified_c_summary(dict(sorted(groups.items())), n_boot=n_boot, seed=seed)
    return {
        **overall,
        "ci95": list(overall["c_index_ci95"]),
        "comparable_pairs": int(overall["n_comparable"]),
        "c_index_within_site": within["c_index"],
        "comparable_pairs_within_site": int(within["n_comparable"]),
        "within_site": within,
        "per_site": {k: m["c_index"] for k, m in per_site.items()},
        "per_site_detail": per_site,
    }


def tile_fractions(
    mask: np.ndarray, coords: np.ndarray, side_l0: float, mpp0: float, mask_um: float
) -> np.ndarray:
    """Fraction of each tile's area that is phenotype (mask value 255)."""
    f = mpp0 / mask_um
    out = np.zeros(len(coords))
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x * f), int(y * f)
        x1, y1 = max(x0 + 1, int((x + side_l0) * f)), max(y0 + 1, int((y + side_l0) * f))
        win = mask[y0:y1, x0:x1]
        out[i] = float((win == 255).mean()) if win.size else 0.0
    return out


def _sites(split: dict[str, Any], fl_cfg: dict[str, Any]) -> list[SiteData]:
    """Each site's training and validation bags, split exactly as `pathfl fl simulate` did."""
    from pathfl.fl.baselines import load_sites
    from pathfl.fl.site import SiteSpec

    specs = [
        SiteSpec(name, Path(s["dir"]) / "features", Path(s["dir"]) / "clinical.csv")
        for name, s in sorted(split["sites"].items())
    ]
    return load_sites(specs, fl_cfg)


def _models(fl_run: Path, sites: list[SiteData], fl_cfg: dict[str, Any]) -> dict[str, tuple]:
    """{name: (model, TrainConfig, scaler, time_bins)}: the federated model (with the
    federation's scaler), then the local-only and pooled baselines
    (:func:`pathfl.fl.baselines.fit_baselines`: the default `pathfl train` recipe with the
    federation's model configuration)."""
    from pathfl.fl.baselines import fit_baselines
    from pathfl.fl.site import train_config
    from pathfl.survival.run import load_run

    fed_model, fed_tcfg, extras = load_run(fl_run)
    models = {"federated": (fed_model, fed_tcfg, extras["scaler"], extras.get("time_bins"))}
    tcfg = train_config(fl_cfg)
    for name, fit in fit_baselines(sites, fl_cfg).items():
        models[name] = (fit["model"], tcfg, fit["scaler"], fit["time_bins"])
    return models


def km_cut_points(
    federated: tuple, sites: list[SiteData], truth: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Risk-group cut points fixed on the *training* patients (never on the validation
    patients the KM curves show): the median federated risk and the median true risk of
    every site's training part."""
    from pathfl.survival.train import predict

    model, tcfg, scaler, tb = federated
    train = [b for s in sites for b in s.train]
    fed = predict(model, scaler.apply(train), tcfg, time_bins=tb).risk
    return {
        "federated model": float(np.median(fed)),
        "oracle": float(np.median([truth[b.patient_id]["risk"] for b in train])),
    }


def _attention(models: dict[str, tuple], bags: list[PatientBag]) -> dict[str, np.ndarray]:
    """The federated model's tile scores (attention) of each validation patient."""
    import torch

    fed_model, _, scaler, _ = models["federated"]
    out: dict[str, np.ndarray] = {}
    fed_model.eval()
    with torch.no_grad():
        for b in scaler.apply(bags):
            res = fed_model(torch.as_tensor(np.asarray(b.features, np.float32)))
            out[b.patient_id] = res.tile_scores.detach().cpu().numpy()
    return out


def evaluate_models(
    config: Any, split: dict[str, Any], fl_run: Path | None, cohort: dict[str, Any]
) -> Evaluation:
    """Train the baselines, predict with every model on the validation patients, write
    ``work/evaluation.json`` and ``work/val_predictions.csv``; return the summary and the
    per-patient arrays (for the report)."""
    import json

    from pathfl.survival.train import predict

    if fl_run is None or not (Path(fl_run) / "model.pt").is_file():
        raise FileNotFoundError(f"{fl_run}: no federated model.pt")
    fl_cfg = json.loads((Path(fl_run) / "fl_config.json").read_text())["config"]
    sites = _sites(split, fl_cfg)
    models = _models(Path(fl_run), sites, fl_cfg)
    bags = [b for s in sites for b in s.val]
    truth = _truth(config.cohort_dir, cohort)
    pids = [b.patient_id for b in bags]
    event = np.array([b.event for b in bags], int)
    time = np.array([b.time for b in bags], float)
    site = np.array([truth[p]["site"] for p in pids])
    preds: dict[str, np.ndarray] = {"oracle": np.array([truth[p]["risk"] for p in pids])}
    for name, (model, tcfg, scaler, tb) in models.items():
        preds[name] = np.asarray(predict(model, scaler.apply(bags), tcfg, time_bins=tb).risk, float)
    scores = {k: score(v, event, time, site, seed=config.seed) for k, v in preds.items()}
    cuts = km_cut_points(models["federated"], sites, truth)
    # each local model on its own site's patients only (the federation's "local-only" number)
    own = np.zeros(len(bags))
    for s in sites:
        own[site == s.site] = preds[f"local_{s.site}"][site == s.site]
    own_score = score(own, event, time, site, seed=config.seed)
    fed_metrics = json.loads((Path(fl_run) / "metrics.json").read_text())
    locals_ = [scores[k]["c_index"] for k in scores if k.startswith("local_")]
    summary = {
        "n_val_patients": len(bags),
        "n_val_events": int(event.sum()),
        "n_train_patients": sum(len(s.train) for s in sites),
        "fl_config": {
            k: fl_cfg[k] for k in ("rounds", "val_folds", "seed", "model", "loss") if k in fl_cfg
        }
        | {"steps_per_round": fed_metrics.get("steps_per_round")},
        "models": scores,
        "local_own_site_c_index_within_site": own_score["c_index_within_site"],
        "local_only_mean_c_index": float(np.mean(locals_)),
        "simulate_reported_federated_c_index": fed_metrics.get("federated_c_index"),
        "km_cut_points": cuts,
        "time_unit": "months",
    }
    write_json_atomic(config.work_dir / "evaluation.json", summary)
    _write_predictions(config.work_dir / "val_predictions.csv", pids, site, event, time, preds)
    return Evaluation(summary, bags, preds, _attention(models, bags), truth, event, time, site)


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
