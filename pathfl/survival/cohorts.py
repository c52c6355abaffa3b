"""In-memory benchmark cohorts as patient bags (used by ``scripts/bench_learning.py`` and the
regression tests of the default recipe):

* :func:`sksurv_cohort` — real survival data that ships with scikit-survival (GBSG2, WHAS500,
  veterans, flchain, AIDS), one bag of one instance per patient (its covariate vector,
  categoricals one-hot encoded), split into sites by a seeded rule that makes them differ.
* :func:`planted_cohort` — MIL bags with a planted tile-level signal, per-site feature shift
  and scale, and a known true log-hazard (so an oracle C-index exists), plus the best
  estimate of it that the tiles allow (the *tile oracle*, see :func:`posterior_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathfl.survival.data import PatientBag

SKSURV_DATASETS = ("gbsg2", "whas500", "veterans", "flchain", "aids")


@dataclass
class Cohort:
    name: str
    bags: list[PatientBag]
    log_hazard: np.ndarray | None = None  # true log-hazard per bag, where known
    # the log-hazard estimated from each bag's own tiles by an observer who knows how the
    # cohort was generated (hidden direction, shift, site transform): what the tiles allow
    tile_log_hazard: np.ndarray | None = None
    # the hidden unit direction of the tile features that carries the signal (planted only)
    signal_direction: np.ndarray | None = None

    @property
    def sites(self) -> list[str]:
        return sorted({str(b.site) for b in self.bags})


def _bag(pid: str, x: np.ndarray, time: float, event: int, site: str) -> PatientBag:
    n = x.shape[0]
    return PatientBag(
        patient_id=pid,
        features=np.ascontiguousarray(x, dtype=np.float32),
        time=float(time),
        event=int(event),
        covariates=None,
        slide_ids=[pid],
        tile_slide_index=np.zeros(n, np.int64),
        coords=np.zeros((n, 2), np.int64),
        site=site,
        attrs={"encoder": "benchmark", "fingerprint": "benchmark"},
    )


def _load_sksurv(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    import pandas as pd
    from sksurv import datasets

    loaders = {
        "gbsg2": datasets.load_gbsg2,
        "whas500": datasets.load_whas500,
        "veterans": datasets.load_veterans_lung_cancer,
        "flchain": datasets.load_flchain,
        "aids": datasets.load_aids,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(SKSURV_DATASETS)}")
    x, y = loaders[name]()
    x = pd.DataFrame(x)
    if name == "flchain":  # chapter (cause of death) is only known after the event
        x = x.drop(columns=["chapter"])
    for c in x.columns:
        if not pd.api.types.is_numeric_dtype(x[c]):
            x[c] = x[c].astype("category")
    x = pd.get_dummies(x, drop_first=True, dtype=float)
    names = list(y.dtype.names)
    event, time = y[names[0]].astype(bool), y[names[1]].astype(float)
    keep = x.notna().all(axis=1).to_numpy() & (time > 0)
    return x.to_numpy(float)[keep], time[keep], event[keep], list(x.columns)


def sksurv_cohort(
    name: str, *, n_sites: int = 3, seed: int = 0, max_patients: int | None = None
) -> Cohort:
    """One-instance bags of a scikit-survival dataset. Sites: patients sorted by their first
    column (age in most sets) plus noise and cut into ``n_sites`` equal groups, so sites
    differ in case mix."""
    x, time, event, _ = _load_sksurv(name)
    rng = np.random.default_rng(seed)
    if max_patients is not None and len(x) > max_patients:
        idx = np.sort(rng.choice(len(x), size=max_patients, replace=False))
        x, time, event = x[idx], time[idx], event[idx]
    key = x[:, 0] + rng.normal(scale=x[:, 0].std() + 1e-9, size=len(x))
    site_of = np.empty(len(x), int)
    site_of[np.argsort(key)] = np.arange(len(x)) * n_sites // len(x)
    bags = [
        _bag(f"{name}-{i:05d}", x[i : i + 1], time[i], int(event[i]), f"site{site_of[i]}")
        for i in range(len(x))
    ]
    return Cohort(name, bags)


def posterior_fraction(
    z: np.ndarray, *, shift: float, max_fraction: float = 0.5, grid: int = 200
) -> float:
    """Posterior mean of a bag's signal fraction ``p ~ U(0, max_fraction)`` given its tiles'
    projections ``z`` on the hidden direction, each ``N(0, 1)`` or, with probability ``p``,
    ``N(shift, 1)`` (a grid over ``p``): the Bayes estimate of ``p`` from the tiles alone."""
    p = (np.arange(grid) + 0.5) / grid * max_fraction
    # log of (1 - p) φ(z) + p φ(z - shift), less log φ(z), summed over the tiles
    log_ratio = shift * np.asarray(z, float)[:, None] - shift**2 / 2
    ll = np.logaddexp(np.log1p(-p)[None], np.log(p)[None] + log_ratio).sum(axis=0)
    w = np.exp(ll - ll.max())
    return float((w * p).sum() / w.sum())


def planted_cohort(
    *,
    n_patients: int = 180,
    feature_dim: int = 64,
    n_sites: int = 3,
    tiles: tuple[int, int] = (80, 400),
    effect: float = 2.0,
    signal_shift: float = 1.5,
    site_shift: float = 1.0,
    site_scale: tuple[float, float] = (0.7, 1.5),
    censor_fraction: float = 0.3,
    seed: int = 0,
) -> Cohort:
    """MIL bags: Gaussian tiles, a fraction ``p_i ~ U(0, 0.5)`` shifted by ``signal_shift``
    along a hidden direction; log-hazard ``effect · (p_i - 0.25) / 0.25`` (so its standard
    deviation is ``effect / √3``); exponential times, uniform censoring tuned to about
    ``censor_fraction`` censored. Each site adds its own random offset (norm ``site_shift``)
    and scale to every tile, as staining and scanners do. ``tile_log_hazard`` is the
    log-hazard of each bag's :func:`posterior_fraction`: about the most its tiles tell."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=feature_dim)
    direction /= np.linalg.norm(direction)
    offsets = rng.normal(size=(n_sites, feature_dim))
    offsets *= site_shift / np.linalg.norm(offsets, axis=1, keepdims=True)
    scales = rng.uniform(*site_scale, size=n_sites)
    frac = rng.uniform(0, 0.5, size=n_patients)
    log_h = effect * (frac - 0.25) / 0.25
    t_event = rng.exponential(np.exp(-log_h))
    t_cens = rng.uniform(0, np.quantile(t_event, 1 - censor_fraction / 2) * 2, size=n_patients)
    time = np.minimum(t_event, t_cens) + 1e-3
    event = (t_event <= t_cens).astype(int)
    bags, frac_hat = [], np.empty(n_patients)
    for i in range(n_patients):
        s = i % n_sites
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        x = rng.normal(size=(n, feature_dim))
        x[rng.random(n) < frac[i]] += signal_shift * direction
        frac_hat[i] = posterior_fraction(x @ direction, shift=signal_shift)
        x = x * scales[s] + offsets[s]
        bags.append(_bag(f"P{i:05d}", x, time[i], event[i], f"site{s}"))
    tile_log_h = effect * (frac_hat - 0.25) / 0.25
    return Cohort(f"planted-{n_patients}x{feature_dim}", bags, log_h, tile_log_h, direction)


def write_cohort(bags: list[PatientBag], folder: Path) -> tuple[Path, Path]:
    """Write ``bags`` as ``folder/features/<patient_id>.h5`` (one slide per patient) and
    ``folder/clinical.csv`` — the files `pathfl train` / a site folder of `fl simulate` read."""
    import csv

    from pathfl.survival.synthetic import write_features_h5

    fdir = Path(folder) / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    for b in bags:
        write_features_h5(
            fdir / f"{b.patient_id}.h5",
            b.features,
            b.coords,
            slide_id=b.patient_id,
            encoder=str(b.attrs.get("encoder", "benchmark")),
            fingerprint=str(b.attrs.get("fingerprint", "benchmark")),
        )
    csv_path = Path(folder) / "clinical.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "slide_id", "time", "event", "site"])
        w.writerows([b.patient_id, b.patient_id, f"{b.time:.6g}", b.event, b.site] for b in bags)
    return fdir, csv_path


def write_sites(cohort: Cohort, root: Path) -> list[Path]:
    """One `fl simulate` site folder per site of ``cohort`` (``root/<site>``)."""
    out = []
    for site in cohort.sites:
        write_cohort([b for b in cohort.bags if b.site == site], Path(root) / site)
        out.append(Path(root) / site)
    return out
