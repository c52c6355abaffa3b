"""Cross-validated training of a survival MIL model -> run directory (what ``pathfl train``
does). Per fold: covariate scaler, time bins (and Cox baseline) from the training fold only;
out-of-fold risks are pooled. A final model is then fitted on all patients with the same
settings (epochs = median of the folds' best epochs when early stopping is on) and saved as
``model.pt`` — the model used by ``pathfl predict`` and ``pathfl heatmap``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic
from pathfl.survival.data import PatientBag, bags_fingerprint, make_folds, targets
from pathfl.survival.linear_cox import LinearCox, bag_rows
from pathfl.survival.metrics import format_c_index, survival_metrics
from pathfl.survival.run import save_run, write_predictions
from pathfl.survival.scaling import BagScaler
from pathfl.survival.train import (
    TrainConfig,
    build_model,
    fit_baseline,
    fit_time_bins,
    passes_per_budget,
    predict,
    train_local,
)

logger = logging.getLogger(__name__)

# (phase, pass, passes, stats): after each training pass (stats: loss[, val_loss]) and once
# more when a fold is scored (stats then hold val_c_index, val_n, val_events)
ProgressFn = Callable[[str, int, int, dict[str, float]], None]


def _split_inner(bags: Sequence[PatientBag], fraction: float, seed: int):
    """Stratified inner train/validation split for early stopping."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(bags))
    ev = np.array([b.event for b in bags])
    strat = ev if min(ev.sum(), len(ev) - ev.sum()) >= 2 else None
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return [bags[i] for i in tr], [bags[i] for i in va]


def fit_one(
    train_bags: Sequence[PatientBag],
    config: TrainConfig,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    progress: ProgressFn | None = None,
    phase: str = "train",
) -> dict[str, Any]:
    """Fit scaler, time bins, model (and Cox baseline) on ``train_bags``. Returns a dict with
    ``model, scaler, time_bins, baseline, stats, train_bags`` (the scaled bags)."""
    seed = config.seed if seed is None else seed
    epochs = config.epochs if epochs is None else epochs
    scaler = BagScaler.fit(train_bags, config.covariates, standardize_features=config.standardize)
    scaled = scaler.apply(train_bags)
    ev, t = targets(scaled)
    time_bins = fit_time_bins(t, ev, n_bins=config.n_bins) if config.head.needs_time_bins else None
    model = build_model(
        config, feature_dim=scaled[0].feature_dim, n_covariates=len(config.covariates)
    )
    fit_bags, val_bags = scaled, None
    if config.early_stopping_patience > 0:
        fit_bags, val_bags = _split_inner(scaled, config.val_fraction, seed)
    passes = passes_per_budget(len(fit_bags), config, epochs=epochs)  # min_steps may raise it

    def _cb(epoch: int, stats: dict[str, float]) -> None:
        if progress is not None:
            progress(phase, epoch + 1, passes, stats)

    stats = train_local(
        model,
        fit_bags,
        config,
        epochs=epochs,
        time_bins=time_bins,
        seed=seed,
        val_bags=val_bags,
        progress=_cb,
    )
    baseline = fit_baseline(model, scaled, config)
    return {
        "model": model,
        "scaler": scaler,
        "time_bins": time_bins,
        "baseline": baseline,
        "stats": stats,
        "train_bags": scaled,
    }


def linear_cox_fold(
    bags: Sequence[PatientBag], tr: np.ndarray, va: np.ndarray, config: TrainConfig
) -> np.ndarray:
    """Validation log-risks of the linear-cox baseline fitted on the fold's training bags."""
    ev, t = targets(bags)
    lc = LinearCox(alpha_per_patient=config.linear_cox_alpha)
    lc.fit(bag_rows([bags[i] for i in tr]), time=t[tr], event=ev[tr])
    return lc.predict(bag_rows([bags[i] for i in va]))


@dataclass
class _OutOfFold:
    """Out-of-fold results accumulated over the folds of :func:`cross_validate`."""

    n: int
    folds: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    surv: dict[int, Any] = field(default_factory=dict)
    best_epochs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.risk = np.full(self.n, np.nan)
        self.high = np.zeros(self.n, dtype=bool)
        self.lc_risk = np.full(self.n, np.nan)

    def pooled_surv(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Out-of-fold survival function over all patients (None if a fold has none)."""
        if not all(fn is not None for _, fn in self.surv.values()):
            return None

        def fn(times: np.ndarray) -> np.ndarray:
            out = np.full((self.n, len(times)), np.nan)
            for va, f in self.surv.values():
                out[va] = f(times)
            return out

        return fn


def _run_fold(
    bags: Sequence[PatientBag],
    k: int,
    n_folds: int,
    tr: np.ndarray,
    va: np.ndarray,
    config: TrainConfig,
    oof: _OutOfFold,
    *,
    progress: ProgressFn | None,
    on_fold: Callable[[int, dict[str, Any], np.ndarray], None] | None,
) -> None:
    """Fit fold ``k`` on ``tr``, score ``va``, and add the results to ``oof``."""
    ev_all, t_all = targets(bags)
    fit = fit_one(
        [bags[i] for i in tr],
        config,
        seed=config.seed + k,
        progress=progress,
        phase=f"fold {k + 1}/{n_folds}",
    )
    if on_fold is not None:
        on_fold(k, fit, va)
    val = fit["scaler"].apply([bags[i] for i in va])
    p = predict(fit["model"], val, config, time_bins=fit["time_bins"], baseline=fit["baseline"])
    p_tr = predict(fit["model"], fit["train_bags"], config, time_bins=fit["time_bins"])
    median_train = float(np.median(p_tr.risk))
    m = survival_metrics(
        train_event=ev_all[tr],
        train_time=t_all[tr],
        event=p.event,
        time=p.time,
        risk=p.risk,
        surv_fn=p.surv_fn,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    m.update(fold=k, train_loss=fit["stats"]["loss"], best_epoch=fit["stats"]["best_epoch"])
    if progress is not None:
        runs = int(fit["stats"]["epochs_run"])
        scored = {"val_c_index": m["c_index"], "val_n": m["n"], "val_events": m["n_events"]}
        progress(f"fold {k + 1}/{n_folds}", runs, runs, {"loss": fit["stats"]["loss"], **scored})
    m["train_median_risk"] = median_train
    oof.folds.append(m)
    oof.best_epochs.append(fit["stats"]["best_epoch"])
    oof.risk[va] = p.risk
    oof.high[va] = p.risk > median_train
    oof.surv[k] = (va, p.surv_fn)
    oof.lc_risk[va] = linear_cox_fold(bags, tr, va, config)
    logger.info("fold %d: C-index %s", k + 1, format_c_index(m))
    for j, i in enumerate(va):
        oof.rows.append(
            {
                "patient_id": bags[i].patient_id,
                "risk": float(p.risk[j]),
                "time": float(t_all[i]),
                "event": int(ev_all[i]),
                "fold": k,
                "risk_group": "high" if oof.high[i] else "low",
            }
        )


def _pooled_metrics(
    bags: Sequence[PatientBag], oof: _OutOfFold, config: TrainConfig, run_dir: Path
) -> dict[str, Any]:
    """Pooled out-of-fold metrics, the linear-cox baseline, fold means and the KM plot.

    Risks of different folds are on different scales for Cox; the pooled Harrell C is
    reported as is (the common convention) together with the mean of per-fold values."""
    from pathfl.survival.plots import km_plot

    ev_all, t_all = targets(bags)
    common = dict(
        train_event=ev_all, train_time=t_all, event=ev_all, time=t_all, n_boot=config.n_boot
    )
    out: dict[str, Any] = {}
    out["pooled_oof"] = survival_metrics(
        **common, risk=oof.risk, surv_fn=oof.pooled_surv(), seed=config.seed
    )
    out["linear_cox"] = {
        "model": "linear-cox",
        "alpha_per_patient": config.linear_cox_alpha,
        "note": "ridge Cox on mean-pooled features (+ covariates), same folds",
        **survival_metrics(**common, risk=oof.lc_risk, seed=config.seed),
    }
    cs = np.array([m["c_index"] for m in oof.folds], float)
    out["fold_mean"] = {
        "c_index_mean": float(np.nanmean(cs)),
        "c_index_sd": float(np.nanstd(cs, ddof=1)) if len(cs) > 1 else 0.0,
        "uno_c_mean": float(np.nanmean([m["uno_c"] for m in oof.folds])),
        "integrated_brier_mean": float(np.nanmean([m["integrated_brier"] for m in oof.folds])),
    }
    out["km_logrank"] = km_plot(
        t_all,
        ev_all,
        oof.high,
        run_dir / "plots" / "km_risk_groups.png",
        title=f"{config.model}/{config.loss}: out-of-fold risk groups ({len(bags)} patients)",
        split_note="high = above the median risk of the fold's own training patients",
        time_unit=config.time_unit,
    )
    out["km_logrank"]["cut_points"] = [m["train_median_risk"] for m in oof.folds]
    logger.info("pooled OOF C-index %s", format_c_index(out["pooled_oof"]))
    return out


def site_folds(bags: Sequence[PatientBag]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Site-preserved folds: one ``(site, train_idx, val_idx)`` per site of the clinical
    table's ``site`` column, the site's patients held out whole (leave-one-site-out).
    ValueError when a patient has no site or there are fewer than two sites."""
    sites = [b.site for b in bags]
    missing = [b.patient_id for b in bags if not b.site]
    if missing:
        raise ValueError(
            f"--group-by site: {len(missing)} patient(s) have no `site` in the clinical table "
            f"(e.g. {', '.join(missing[:3])})"
        )
    names = sorted(set(sites))  # type: ignore[arg-type]
    if len(names) < 2:
        raise ValueError(f"--group-by site needs at least two sites, the table has {names}")
    arr = np.array(sites)
    return [(s, np.flatnonzero(arr != s), np.flatnonzero(arr == s)) for s in names]


def _folds(
    bags: Sequence[PatientBag], config: TrainConfig, group_by: str | None
) -> list[tuple[str | None, np.ndarray, np.ndarray]]:
    if group_by not in (None, "", "site"):
        raise ValueError(f"--group-by {group_by!r}: only `site` is supported")
    if group_by == "site":
        return site_folds(bags)
    if config.folds < 2:
        return []
    return [(None, tr, va) for tr, va in make_folds(bags, k=config.folds, seed=config.seed)]


def cross_validate(
    bags: Sequence[PatientBag],
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    final_model: bool = True,
    on_fold: Callable[[int, dict[str, Any], np.ndarray], None] | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """K-fold CV (``config.folds``; 1 = fit on everything, no validation metrics), pooled OOF
    metrics, the linear-cox baseline on the same folds (``metrics["linear_cox"]``),
    predictions.csv, KM plot, final model. ``on_fold(k, fit, val_idx)`` sees each
    fold's fitted model (see :func:`fit_one`). ``group_by="site"``: site-preserved
    cross-validation instead, one fold per site (:func:`site_folds`; each fold's metrics name
    its ``held_out_site``). Returns the metrics dict."""
    run_dir = Path(run_dir)
    bags = list(bags)
    oof = _OutOfFold(len(bags))
    folds = _folds(bags, config, group_by)
    for k, (site, tr, va) in enumerate(folds):
        _run_fold(bags, k, len(folds), tr, va, config, oof, progress=progress, on_fold=on_fold)
        if site is not None:
            oof.folds[-1]["held_out_site"] = site
    metrics: dict[str, Any] = {"config": config.to_dict(), "folds": oof.folds}
    if group_by:
        metrics["group_by"] = group_by
    if oof.folds:
        metrics.update(_pooled_metrics(bags, oof, config, run_dir))
    if oof.folds and not final_model:  # CV only: metrics and predictions, no model
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_predictions(run_dir / "predictions.csv", oof.rows)
        return metrics
    epochs = config.epochs
    if config.early_stopping_patience > 0 and oof.best_epochs:
        epochs = int(np.median(oof.best_epochs))
    fit = fit_one(bags, config, epochs=epochs, progress=progress, phase="final (all data)")
    metrics["final_model"] = {
        "trained_on": "all patients",
        "epochs": epochs,
        "passes_run": int(fit["stats"]["epochs_run"]),  # epochs, raised to reach min_steps
        "train_loss": fit["stats"]["loss"],
    }
    save_run(
        run_dir,
        fit["model"],
        config,
        feature_dim=bags[0].feature_dim,
        fingerprint=bags_fingerprint(bags),
        time_bins=fit["time_bins"],
        scaler=fit["scaler"],
        metrics=metrics,
        predictions=oof.rows or None,
        baseline=fit["baseline"],
        extra={"n_patients": len(bags), "folds": config.folds},
    )
    return metrics
