"""Model run directory (DESIGN): ``model.pt`` (state_dict), ``config.json``, ``metrics.json``,
``predictions.csv``, ``plots/``. Everything is written atomically."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathfl.io import atomic_path, write_json_atomic
from pathfl.survival.scaling import BagScaler
from pathfl.survival.train import TrainConfig, build_model

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("patient_id", "risk", "time", "event", "fold")
#: the columns of ``pathfl predict``'s CSV (a new patient has no cross-validation fold)
PREDICT_COLUMNS = ("patient_id", "risk", "time", "event")
RUN_FORMAT = "pathfl-survival-run/1"


class RunError(ValueError):
    """A run directory is missing files or is inconsistent."""


def write_predictions(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] = PREDICTION_COLUMNS,
) -> None:
    """``predictions.csv``: ``columns`` first (the run directory's: ``patient_id, risk, time,
    event, fold``), extra columns of the rows (e.g. ``risk_group``) after."""
    extra = [k for k in (rows[0] if rows else {}) if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*columns, *extra], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _baseline_dict(baseline: tuple[np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    return {"times": np.asarray(baseline[0]).tolist(), "cumhaz": np.asarray(baseline[1]).tolist()}


def save_run(
    run_dir: str | os.PathLike[str],
    model: nn.Module,
    config: TrainConfig,
    *,
    feature_dim: int,
    fingerprint: Any,
    time_bins: Any,
    scaler: BagScaler | None,
    metrics: Mapping[str, Any] | None,
    predictions: Sequence[Mapping[str, Any]] | None,
    baseline: tuple[np.ndarray, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a run directory that :func:`load_run` (and ``pathfl predict/heatmap``) can use."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    n_cov = len(scaler.columns) if scaler is not None else 0
    cfg = {
        "format": RUN_FORMAT,
        "model": config.model,
        "loss": config.loss,
        "feature_dim": int(feature_dim),
        "n_covariates": n_cov,
        "fingerprint": fingerprint,
        "time_bins": None if time_bins is None else [float(x) for x in np.asarray(time_bins)],
        "scaler": (scaler or BagScaler()).to_dict(),
        "breslow_baseline": None if baseline is None else _baseline_dict(baseline),
        "train_config": config.to_dict(),
        **dict(extra or {}),
    }
    write_json_atomic(run_dir / "config.json", cfg)
    if metrics is not None:
        write_json_atomic(run_dir / "metrics.json", metrics)
    if predictions is not None:
        write_predictions(run_dir / "predictions.csv", predictions)
    logger.info("saved run to %s", run_dir)
    return run_dir


def _rebase(obj: Any, old: str, new: str) -> Any:
    if isinstance(obj, str) and (obj == old or obj.startswith(old + os.sep)):
        return new + obj[len(old) :]
    if isinstance(obj, dict):
        return {k: _rebase(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, old, new) for v in obj]
    return obj


def rebase_run_paths(
    built_in: str | os.PathLike[str], *, final: str | os.PathLike[str]
) -> dict[str, Any] | None:
    """A run built in a temporary folder ``built_in`` that will become ``final`` names the
    temporary folder in metrics.json (e.g. the KM plot): make those paths point into ``final``
    (call before the folder is moved). Returns the rewritten metrics (None: no metrics.json)."""
    import json

    path = Path(built_in) / "metrics.json"
    if not path.is_file():
        return None
    metrics = _rebase(json.loads(path.read_text()), str(built_in), str(final))
    write_json_atomic(path, metrics)
    return metrics


def load_run(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model of a run directory. ``extras`` = the config.json dict with
    ``time_bins`` (ndarray|None), ``scaler`` (:class:`BagScaler`) and ``baseline``
    ((times, cumhaz) | None) decoded."""
    import json

    run_dir = Path(run_dir)
    cfg_path, model_path = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, model_path):
        if not p.is_file():
            raise RunError(f"{run_dir}: not a pathfl run directory ({p.name} missing)")
    try:
        cfg = json.loads(cfg_path.read_text())
        config = TrainConfig.from_dict(cfg["train_config"])
        model = build_model(
            config, feature_dim=int(cfg["feature_dim"]), n_covariates=int(cfg["n_covariates"])
        )
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"{run_dir}: cannot load run: {e}") from e
    model.eval()
    extras = dict(cfg)
    extras["time_bins"] = None if cfg.get("time_bins") is None else np.asarray(cfg["time_bins"])
    extras["scaler"] = BagScaler.from_dict(cfg.get("scaler"))
    bl = cfg.get("breslow_baseline")
    extras["baseline"] = None if not bl else (np.asarray(bl["times"]), np.asarray(bl["cumhaz"]))
    return model, config, extras
