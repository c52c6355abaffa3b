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
