"""Unseen-site evaluation (leave-one-site-out): a model trained without site ``h`` — the
federated model over the other sites, the pooled model on their union, each of their
local-only models — scored on *every* patient of ``h``, with the patient count, events and a
bootstrap 95 % CI over ``h``'s patients. Only a simulation (one machine holding every site)
can do this; :mod:`pathfl.fl.flower.loso` runs the federations.

Every model is fitted on the same data: the training parts (:func:`pathfl.fl.site.split_bags`)
of the k−1 federated sites, with ``pathfl train``'s recipe for the baselines
(:func:`pathfl.fl.baselines.fit_baselines`)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.fl.baselines import fit_baselines, load_sites
from pathfl.fl.site import one_torch_thread, split_bags, train_config

logger = logging.getLogger(__name__)


def site_bags(spec: Any, cfg: dict[str, Any]) -> list[Any]:
    """Every patient bag of one site folder (no train/validation split)."""
    from pathfl.fl.fed_stats import covariates_of
    from pathfl.survival.data import load_bags, load_clinical

    cov = covariates_of(cfg)
    return load_bags(spec.features, load_clinical(spec.clinical, covariates=cov), covariates=cov)


def federated_fit(run_dir: Path) -> dict[str, Any]:
    """The federated run's model as a :func:`pathfl.survival.cv.fit_one`-like dict."""
    from pathfl.survival.run import load_run

    model, _tcfg, extras = load_run(run_dir)
    return {
        "model": model,
        "scaler": extras["scaler"],
        "time_bins": extras.get("time_bins"),
        "baseline": extras.get("baseline"),
    }


def risks(fit: dict[str, Any], bags: Sequence[Any], cfg: dict[str, Any]) -> Any:
    """:func:`pathfl.survival.train.predict` of ``fit``'s model on ``bags`` (scaled with its
    own scaler)."""
    from pathfl.survival.train import predict

    return predict(
        fit["model"],
        fit["scaler"].apply(list(bags)),
        train_config(cfg),
        time_bins=fit.get("time_bins"),
        baseline=fit.get("baseline"),
    )


def score(
    method: str,
    risk_sets: list[np.ndarray],
    bags: Sequence[Any],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Harrell C of ``bags`` (the mean over ``risk_sets`` when several models are scored, as
    for local-only) with n, events and a percentile-bootstrap 95 % CI over the patients
    (each replicate scores every model on the same resampled patients)."""
    from pathfl.survival.data import targets
    from pathfl.survival.metrics import bootstrap_ci, harrell_c

    ev, t = targets(bags)

    def stat(i: np.ndarray) -> float:
        return float(np.mean([harrell_c(ev[i], t[i], r[i]) for r in risk_sets]))

    lo, hi = bootstrap_ci(stat, len(ev), n_boot=n_boot, seed=seed) if n_boot else (np.nan,) * 2
    return {
        "method": method,
        "n": len(ev),
        "events": int(ev.sum()),
        "c_index": stat(np.arange(len(ev))),
        "ci_low": lo,
        "ci_high": hi,
    }


def held_out_rows(
    run_dir: Path,
    held: Any,
    train_specs: Sequence[Any],
    cfg: dict[str, Any],
    *,
    n_boot: int = 200,
    baselines: bool = True,
) -> list[dict[str, Any]]:
    """Federated (``run_dir``), pooled and local-only (mean and each; unless not
    ``baselines``) scored on every patient of the held-out site ``held``. ``cfg`` is the
    federated run's effective config."""
    kw = {"n_boot": n_boot, "seed": int(cfg["seed"])}
    bags = site_bags(held, cfg)
    with one_torch_thread():
        rows = [score("federated", [risks(federated_fit(run_dir), bags, cfg).risk], bags, **kw)]
        if baselines:
            fits = fit_baselines(load_sites(list(train_specs), cfg), cfg)
            local = {k: risks(f, bags, cfg).risk for k, f in fits.items() if k != "pooled"}
            rows += [
                score("pooled", [risks(fits["pooled"], bags, cfg).risk], bags, **kw),
                score("local-only (mean)", list(local.values()), bags, **kw),
                *(score(k.replace("_", "-only ", 1), [r], bags, **kw) for k, r in local.items()),
            ]
    return [{"held_out_site": held.name, **r} for r in rows]


def adapt_rows(
    run_dir: Path, held: Any, cfg: dict[str, Any], *, part: str, n_boot: int = 200
) -> list[dict[str, Any]]:
    """The unseen site joins after the federation and personalises the federated model
    (:func:`pathfl.fl.personalise.personalise`) on its own training part; both models are
    scored on its validation part."""
    from pathfl.fl.personalise import personalise

    train, val = split_bags(
        site_bags(held, cfg), val_folds=int(cfg["val_folds"]), seed=int(cfg["seed"])
    )
    fed = federated_fit(run_dir)
    mine = personalise(fed, train, cfg, part=part)
    kw = {"n_boot": n_boot, "seed": int(cfg["seed"])}
    rows = [
        score("federated (unseen site's validation part)", [risks(fed, val, cfg).risk], val, **kw),
        score(f"federated + personalised {part}", [risks(mine, val, cfg).risk], val, **kw),
    ]
    return [{"held_out_site": held.name, **r} for r in rows]


COLUMNS = ("held_out_site", "method", "n", "events", "c_index", "ci_low", "ci_high")


def write_table(path: Path, rows: list[dict[str, Any]]) -> str:
    """``unseen_site.csv`` (temp file, then rename); returns the Markdown table."""
    from pathfl.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| held-out site | method | n | events | C-index [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['held_out_site']} | {r['method']} | {r['n']} | {r['events']} "
            f"| {r['c_index']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |"
        )
    return "\n".join(lines) + "\n"
