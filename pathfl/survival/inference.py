"""Using a trained run on new data: patient tables without outcomes, per-slide tile scores
and heatmaps (``pathfl predict`` / ``pathfl heatmap``)."""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathfl.formats.features_h5 import read_features
from pathfl.survival.data import (
    ClinicalError,
    ClinicalRow,
    ClinicalTable,
    PatientBag,
    load_clinical,
)
from pathfl.survival.fingerprint import check_run_fingerprint, file_fingerprint
from pathfl.survival.run import load_run

logger = logging.getLogger(__name__)


def clinical_for_slides(slide_ids: Sequence[str]) -> ClinicalTable:
    """A table with one patient per slide and placeholder outcomes (prediction only)."""
    if not slide_ids:
        raise ClinicalError("<slides>", ["no slides given"])
    rows = [ClinicalRow(i + 2, s, s, 1.0, 0, None, {}) for i, s in enumerate(slide_ids)]
    return ClinicalTable("<slides>", rows, [])


def load_predict_table(
    path: str | os.PathLike[str], covariates: Sequence[str]
) -> tuple[ClinicalTable, bool]:
    """Clinical CSV for prediction: ``time``/``event`` are optional (placeholders when both
    are absent). Returns ``(table, has_outcome)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clinical table not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    if "time" in header and "event" in header:
        return load_clinical(path, covariates=list(covariates)), True
    # no outcome columns: add placeholders and validate the rest as usual
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / path.name
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*header, "time", "event"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "time": 1, "event": 0})
        table = load_clinical(p, covariates=list(covariates))
    table.path = str(path)
    return table, False


def check_bags_for_run(
    bags: Sequence[PatientBag], extras: dict, *, source: str, run: str | os.PathLike[str]
) -> list[str]:
    """Refuse bags whose features were made differently from the run's training features
    (:func:`~pathfl.survival.fingerprint.check_run_fingerprint`; the bags of one call were
    already checked to agree with each other). Returns the warnings."""
    made_with = bags[0].attrs.get("made_with") if bags else None
    if not made_with:
        return []
    return check_run_fingerprint(extras.get("fingerprint"), made_with, source=source, run=str(run))


def slide_tile_scores(
    run_dir: str | os.PathLike[str], features_h5: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray, dict, float]:
    """Per-tile scores of one slide's tiles under a run's model, treating the slide as the bag
    (covariates, if the model uses them, set to the training mean, i.e. 0 after scaling).
    Returns ``(coords, scores, features attrs, slide risk)``."""
    model, cfg, extras = load_run(run_dir)
    feats, coords, attrs = read_features(features_h5)
    check_run_fingerprint(
        extras.get("fingerprint"),
        file_fingerprint(attrs, feats),
        source=str(features_h5),
        run=str(run_dir),
    )
    if feats.shape[1] != extras["feature_dim"]:
        raise ValueError(
            f"{features_h5}: {feats.shape[1]}-d features, the model wants {extras['feature_dim']}"
        )
    cov = torch.zeros(extras["n_covariates"]) if extras["n_covariates"] else None
    x = extras["scaler"].transform_features(feats)  # the run's training standardisation
    with torch.no_grad():
        out = model(torch.from_numpy(x), cov)
    risk = float(cfg.head.risk(out.logits.unsqueeze(0))[0])
    return coords, out.tile_scores.numpy().astype(float), attrs, risk


def _open_for_heatmap(
    slide_path: Path, attrs: dict, backend: str, mpp_override: float | None, sid: str
) -> Any:
    """Open the slide at the level-0 mpp its features were made with (``mpp_level0`` of the
    features file; tile coordinates are level-0 pixels at that mpp), so a slide tiled with
    ``--mpp-override`` needs nothing more here. ``mpp_override`` wins when given."""
    from pathfl.slide import open_slide
    from pathfl.slide.base import SlideError
    from pathfl.slide.metadata import MPP_HELP

    recorded = attrs.get("mpp_level0")
    mpp = mpp_override if mpp_override is not None else recorded
    try:
        return open_slide(
            slide_path,
            backend=backend,
            mpp_override=None if mpp in (None, "") else float(mpp),
            slide_id=sid,
        )
    except SlideError as e:
        if mpp in (None, "") and MPP_HELP in str(e):  # not in the slide, not in its features
            raise ValueError(
                f"{slide_path}: microns per pixel unknown: neither the slide nor its features "
                "file records it; pass --mpp-override X (µm/px at level 0)"
            ) from e
        raise ValueError(str(e)) from e


RISK_MEANING = {
    "cox": "the model's log-risk (Cox linear predictor): higher = worse; only differences "
    "between patients mean something (+0.69 = twice the hazard)",
    "nll": "minus the sum of the predicted survival over the time bins: higher = worse",
}


def slide_heatmap(
    run_dir: str | os.PathLike[str],
    features_dir: str | os.PathLike[str],
    slide_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    slide_id: str | None = None,
    backend: str = "auto",
    mpp_override: float | None = None,
    thumb_px: int = 1024,
    n_top: int = 16,
) -> list[Path]:
    """Heatmap PNG + ``<out>_top_tiles.png`` montage + ``<out>_scores.csv`` +
    ``<out>_tiles.geojson`` (QuPath) for one slide."""
    from pathfl.io import atomic_path
    from pathfl.slide.base import slide_id_from_path
    from pathfl.survival.heatmaps import heatmap_png, top_tiles_montage, write_tiles_geojson

    slide_path = Path(slide_path)
    sid = slide_id or slide_id_from_path(slide_path)
    h5 = Path(features_dir) / f"{sid}.h5"
    if not h5.is_file():
        raise FileNotFoundError(f"{h5}: no features file for slide {sid}")
    coords, scores, attrs, risk = slide_tile_scores(run_dir, h5)
    loss = json.loads((Path(run_dir) / "config.json").read_text()).get("loss")
    tile_l0 = float(attrs.get("patch_size_level0", attrs.get("tile_size", 224)))
    out_png = Path(out_png)
    stem = out_png.with_name(out_png.stem)
    paths = [out_png, Path(f"{stem}_top_tiles.png"), Path(f"{stem}_scores.csv")]
    paths.append(Path(f"{stem}_tiles.geojson"))
    with _open_for_heatmap(slide_path, attrs, backend, mpp_override, sid) as s:
        heatmap_png(
            s,
            coords,
            scores,
            tile_size_l0=tile_l0,
            out_png=out_png,
            thumb_px=thumb_px,
            title=f"{sid}: slide risk {risk:.3g} = {RISK_MEANING.get(loss, 'higher = worse')}",
        )
        top_tiles_montage(
            s, coords, scores, tile_size_l0=round(tile_l0), out_png=paths[1], n_tiles=n_top
        )
    with atomic_path(paths[2]) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "score"])
        w.writerows((int(x), int(y), f"{v:.6g}") for (x, y), v in zip(coords, scores, strict=True))
    write_tiles_geojson(paths[3], coords, scores, tile_l0=tile_l0, slide_id=sid)
    logger.info("heatmap of %s (%d tiles) -> %s", sid, len(scores), out_png)
    return paths
