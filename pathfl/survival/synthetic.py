"""Synthetic survival cohorts with a planted tile-level signal, written as real DESIGN
features files + clinical CSV (used by tests, the benchmark and demos).

Each patient gets 1-2 slides of Gaussian tile features. A hidden fraction ``p_i`` of the tiles
are "signal" tiles shifted along a fixed direction; the patient's log-hazard is
``effect · p_i / max_signal_fraction`` (plus an optional covariate effect), so only those tiles
carry prognosis. Times are exponential, censoring is uniform."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathfl.formats.coords_h5 import level0_attrs


@dataclass
class SyntheticCohort:
    features_dir: Path
    clinical_csv: Path
    signal: dict[str, np.ndarray]  # slide_id -> bool (N,) ground-truth signal tiles
    log_hazard: dict[str, float]  # patient_id -> true log-hazard


def write_features_h5(
    path: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    *,
    slide_id: str,
    encoder: str = "synthetic",
    tile_px: int = 224,
    fingerprint: str = "synthetic-v1",
) -> None:
    """Write one features file of ``features`` on a level-0 grid of ``tile_px`` tiles at
    0.5 µm/px, as if made by ``encoder`` (:func:`pathfl.formats.features_h5.write_features`)."""
    from pathfl import __version__
    from pathfl.formats.features_h5 import write_features

    attrs = {
        **level0_attrs(name=slide_id, tile_px=tile_px, mpp=0.5),
        "encoder": encoder,
        "weights_sha256": "none",
        "feature_dim": int(features.shape[1]),
        "transform": json.dumps({"resize": tile_px, "mean": [0, 0, 0], "std": [1, 1, 1]}),
        "fingerprint": fingerprint,
        "pathfl_version": __version__,  # what `pathfl tile` stamps on a real tiling
    }
    write_features(path, features, np.asarray(coords, dtype=np.int64), attrs)


def make_cohort(
    out_dir: str | os.PathLike[str],
    *,
    n_patients: int = 120,
    feature_dim: int = 32,
    tiles: tuple[int, int] = (40, 120),
    max_signal_fraction: float = 0.3,
    effect: float = 8.0,
    signal_shift: float = 3.0,
    censor_max: float = 25.0,
    covariate_effect: float = 0.0,
    two_slide_fraction: float = 0.3,
    grid_cols: int = 16,
    tile_px: int = 224,
    encoder: str = "synthetic",
    seed: int = 0,
) -> SyntheticCohort:
    """Write ``out_dir/features/<slide_id>.h5`` and ``out_dir/clinical.csv``. Coordinates lie
    on a ``grid_cols``-wide grid of ``tile_px`` tiles (level 0)."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    fdir = out_dir / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    direction = rng.normal(size=feature_dim)
    direction /= np.linalg.norm(direction)
    signal: dict[str, np.ndarray] = {}
    log_h: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    for i in range(n_patients):
        pid = f"P{i:04d}"
        frac = rng.uniform(0, max_signal_fraction)
        age = rng.normal(60, 10)
        lh = effect * frac / max_signal_fraction + covariate_effect * (age - 60) / 10
        log_h[pid] = float(lh)
        t_event = rng.exponential(10.0 * np.exp(-lh + effect / 2))
        t_cens = rng.uniform(1.0, censor_max)
        time, event = (t_event, 1) if t_event <= t_cens else (t_cens, 0)
        n_slides = 2 if rng.random() < two_slide_fraction else 1
        for s in range(n_slides):
            sid = f"{pid}_S{s}"
            n = int(rng.integers(tiles[0], tiles[1] + 1))
            is_sig = rng.random(n) < frac
            x = rng.normal(size=(n, feature_dim)).astype(np.float32)
            x[is_sig] += (signal_shift * direction).astype(np.float32)
            cells = rng.choice(grid_cols * grid_cols, size=min(n, grid_cols**2), replace=False)
            if n > grid_cols**2:
                cells = np.resize(cells, n)
            coords = np.stack([(cells % grid_cols) * tile_px, (cells // grid_cols) * tile_px], 1)
            write_features_h5(
                fdir / f"{sid}.h5", x, coords, slide_id=sid, tile_px=tile_px, encoder=encoder
            )
            signal[sid] = is_sig
            rows.append(
                {
                    "patient_id": pid,
                    "slide_id": sid,
                    "time": round(float(time), 4),
                    "event": event,
                    "age": round(float(age), 2),
                }
            )
    csv_path = out_dir / "clinical.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["patient_id", "slide_id", "time", "event", "age"])
        w.writeheader()
        w.writerows(rows)
    return SyntheticCohort(fdir, csv_path, signal, log_h)


def split_into_sites(cohort: SyntheticCohort, root: Path, names: list[str]) -> list[Path]:
    """Split ``cohort`` by patient (round-robin over sorted ids) into one folder per site name,
    each with ``features/`` (absolute symlinks to the cohort's files) and ``clinical.csv`` — the
    layout `pathfl fl simulate --site DIR` reads. Returns the site folders in ``names`` order."""
    with open(cohort.clinical_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    dirs = []
    for k, name in enumerate(names):
        mine = set(patients[k :: len(names)])
        site = Path(root) / name
        (site / "features").mkdir(parents=True, exist_ok=True)
        site_rows = [r for r in rows if r["patient_id"] in mine]
        for r in site_rows:
            link = site / "features" / f"{r['slide_id']}.h5"
            if not link.exists():
                link.symlink_to((cohort.features_dir / f"{r['slide_id']}.h5").resolve())
        with open(site / "clinical.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(site_rows)
        dirs.append(site)
    return dirs
