"""Clinical table + features files -> patient bags for survival MIL.

The clinical table is parsed and validated by :mod:`pathfl.survival.clinical` (re-exported
here). A patient's bag is the union of the tiles of all their slides' features files
(``<features_dir>/<slide_id>.h5``, read by :mod:`pathfl.formats.features_h5`). Every features
file of a cohort must have been made alike (:mod:`pathfl.survival.fingerprint`);
:func:`load_cohort` reports the problems of the table and of its features files together, each
with its CSV line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.formats.features_h5 import (
    FeaturesFile,
    FeaturesFileError,
    read_augmented,
    read_features,
)
from pathfl.survival.augment import concat_augmented
from pathfl.survival.clinical import (
    REQUIRED_COLUMNS,
    RESERVED_COLUMNS,
    ClinicalError,
    ClinicalRow,
    ClinicalTable,
    Problem,
    SlideRef,
    format_problems,
    load_clinical,
    parse_clinical,
)
from pathfl.survival.fingerprint import file_fingerprint, mix_problems

__all__ = [
    "REQUIRED_COLUMNS",
    "RESERVED_COLUMNS",
    "ClinicalError",
    "ClinicalRow",
    "ClinicalTable",
    "PatientBag",
    "bags_fingerprint",
    "load_bags",
    "load_clinical",
    "load_cohort",
    "make_folds",
    "survival_array",
    "targets",
]

logger = logging.getLogger(__name__)


@dataclass
class PatientBag:
    """All tiles of one patient. ``features`` keeps the file dtype (float32 or float16);
    ``tile_slide_index[i]`` says which of ``slide_ids`` tile ``i`` comes from; ``coords`` are
    level-0 (x, y) of each tile in its own slide. ``features_aug`` (N, K, D): K augmented
    copies of each tile's features (``pathfl extract --stain-augment K``), drawn from in
    training only (:mod:`pathfl.survival.augment`); None when the files have none."""

    patient_id: str
    features: np.ndarray
    time: float
    event: int
    covariates: np.ndarray | None
    slide_ids: list[str]
    tile_slide_index: np.ndarray
    coords: np.ndarray
    site: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    features_aug: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


# ---------------------------------------------------------------------------------------------
# features files


def _read_aug(path: Path, features: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """A file's ``features_aug`` (None without one) and the problem when its shape does not
    fit ``features``."""
    aug = read_augmented(path)
    if aug is None:
        return None, None
    n, d = features.shape
    if aug.ndim != 3 or aug.shape[0] != n or aug.shape[2] != d or aug.shape[1] < 1:
        return None, f"features_aug {aug.shape} does not fit features {features.shape} (N,K,D)"
    return aug if aug.dtype in (np.float32, np.float16) else aug.astype(np.float32), None


def _read_slides(
    features_dir: Path, refs: Sequence[SlideRef], *, augmented: bool = False
) -> tuple[dict[str, FeaturesFile], dict[str, np.ndarray | None], list[Problem]]:
    """Read the features file of every referenced slide (and its ``features_aug`` when
    ``augmented``); a missing, unreadable or empty file, or files made differently, are
    problems naming the CSV line(s)."""
    problems: list[Problem] = []
    loaded: dict[str, FeaturesFile] = {}
    aug: dict[str, np.ndarray | None] = {}
    for ref in refs:
        p = features_dir / f"{ref.slide_id}.h5"
        if not p.is_file():
            problems.append(Problem(ref.line, ref.where, f"no features file {p}"))
            continue
        try:
            loaded[ref.slide_id] = read_features(p)
            if augmented:
                aug[ref.slide_id], bad = _read_aug(p, loaded[ref.slide_id][0])
                if bad:
                    problems.append(Problem(ref.line, ref.where, f"features file {p}: {bad}"))
        except FeaturesFileError as e:
            problems.append(
                Problem(ref.line, ref.where, f"unreadable features file {p}: {e.problem}")
            )
            continue
        if loaded[ref.slide_id][0].shape[0] == 0:
            problems.append(Problem(ref.line, ref.where, f"features file {p} has 0 tiles"))
    fps = {sid: file_fingerprint(a, f) for sid, (f, _, a) in loaded.items()}
    where = {r.slide_id: f"{r.slide_id} (line {r.line})" for r in refs}
    problems += [Problem(None, "", m) for m in mix_problems(fps, where)]
    return loaded, aug, problems


def _bag(
    rows: list[ClinicalRow],
    loaded: dict[str, FeaturesFile],
    cov_cols: list[str],
    aug: dict[str, np.ndarray | None],
) -> PatientBag:
    feats = [loaded[r.slide_id][0] for r in rows]
    coords = [loaded[r.slide_id][1] for r in rows]
    index = np.concatenate([np.full(len(f), k, dtype=np.int64) for k, f in enumerate(feats)])
    cov = (
        np.array([rows[0].covariates[c] for c in cov_cols], dtype=np.float32) if cov_cols else None
    )
    first_feats, _, first_attrs = loaded[rows[0].slide_id]
    return PatientBag(
        patient_id=rows[0].patient_id,
        features=np.concatenate(feats, axis=0),
        time=rows[0].time,
        event=rows[0].event,
        covariates=cov,
        slide_ids=[r.slide_id for r in rows],
        tile_slide_index=index,
        coords=np.concatenate(coords, axis=0),
        site=rows[0].site,
        attrs={
            "encoder": first_attrs.get("encoder"),
            "fingerprint": first_attrs.get("fingerprint"),
            "made_with": file_fingerprint(first_attrs, first_feats),
        },
        features_aug=concat_augmented(
            [aug.get(r.slide_id) for r in rows],
            n_rows=[len(f) for f in feats],
            patient_id=rows[0].patient_id,
        ),
    )


def _load(
    features_dir: str | os.PathLike[str],
    clinical: ClinicalTable,
    covariates: Sequence[str] | None,
    problems: list[Problem],
    refs: Sequence[SlideRef],
    augmented: bool,
) -> list[PatientBag]:
    features_dir = Path(features_dir)
    cov_cols = list(covariates or [])
    bad_cov = [c for c in cov_cols if c not in clinical.covariate_columns]
    if bad_cov:
        raise ClinicalError(
            clinical.path,
            [f"covariate(s) {', '.join(bad_cov)} not in table ({clinical.covariate_columns})"],
        )
    loaded, aug, file_problems = _read_slides(features_dir, refs, augmented=augmented)
    if problems or file_problems:
        where = "in the clinical table" + (" or its features files" if file_problems else "")
        raise ClinicalError(
            clinical.path, format_problems([*problems, *file_problems]), where=where
        )
    bags = [_bag(clinical.rows_of(pid), loaded, cov_cols, aug) for pid in clinical.patient_ids]
    logger.info(
        "loaded %d patients, %d slides, %d tiles from %s",
        len(bags),
        len(clinical.rows),
        sum(b.n_tiles for b in bags),
        features_dir,
    )
    return bags


def load_bags(
    features_dir: str | os.PathLike[str],
    clinical: ClinicalTable,
    *,
    covariates: Sequence[str] | None = None,
    augmented: bool = True,
) -> list[PatientBag]:
    """Build one bag per patient from ``<features_dir>/<slide_id>.h5``. ``covariates``: the
    covariate columns to attach (default none; raw values — standardise with
    :class:`pathfl.survival.scaling.BagScaler` fitted on the training fold). Every slide must
    exist, be readable, and have been made alike (encoder, weights, target mpp, tile size,
    pathfl version, feature dim, dtype); problems are reported together in one
    :class:`ClinicalError`. ``augmented``: also read the files' ``features_aug`` copies
    (training-time augmentation, K more copies of every tile in memory; callers that only
    evaluate or predict pass False)."""
    refs = [SlideRef(r.line, r.patient_id, r.slide_id) for r in clinical.rows]
    return _load(features_dir, clinical, covariates, [], refs, augmented)


def load_cohort(
    features_dir: str | os.PathLike[str],
    clinical_csv: str | os.PathLike[str],
    *,
    covariates: Sequence[str] | None = None,
    augmented: bool = True,
) -> tuple[ClinicalTable, list[PatientBag]]:
    """:func:`load_clinical` + :func:`load_bags` in one pass: the problems of the table and of
    the features files of every row (rejected rows included) are reported together, each with
    its CSV line. ``covariates`` and ``augmented`` as in :func:`load_bags`."""
    table, problems = parse_clinical(clinical_csv, covariates=covariates)
    return table, _load(features_dir, table, covariates, problems, table.slide_refs, augmented)


def bags_fingerprint(bags: Sequence[PatientBag]) -> dict[str, Any]:
    """How the features of ``bags`` were made (the fields of
    :mod:`pathfl.survival.fingerprint`) and the set of their feature fingerprints."""
    fps = sorted({str(b.attrs.get("fingerprint")) for b in bags})
    made_with = dict(bags[0].attrs.get("made_with") or {}) if bags else {}
    return {
        **made_with,
        "encoder": bags[0].attrs.get("encoder") if bags else None,
        "feature_dim": bags[0].feature_dim if bags else None,
        "fingerprints": fps,
    }


# ---------------------------------------------------------------------------------------------
# covariates, folds, targets


def make_folds(
    bags: Sequence[PatientBag], *, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, val_idx) splits over patients (bags are per patient), stratified by
    event, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    events = np.array([b.event for b in bags])
    n_min = int(min((events == 0).sum(), (events == 1).sum()))
    if k < 2:
        raise ValueError(f"need k >= 2 folds, got {k}")
    if len(bags) < k:
        raise ValueError(f"{len(bags)} patients cannot be split into {k} folds")
    if n_min < k:
        logger.warning(
            "only %d patients in the rarer event class: stratification over %d folds is partial",
            n_min,
            k,
        )
        from sklearn.model_selection import KFold

        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(events)]
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(np.zeros(len(events)), events)]


def survival_array(event: Any, time: Any) -> np.ndarray:
    """scikit-survival structured array (``event`` bool, ``time`` float)."""
    from sksurv.util import Surv

    return Surv.from_arrays(
        event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float)
    )


def targets(bags: Sequence[PatientBag]) -> tuple[np.ndarray, np.ndarray]:
    """``(event int (n,), time float (n,))`` of ``bags``."""
    return (
        np.array([b.event for b in bags], dtype=np.int64),
        np.array([b.time for b in bags], dtype=np.float64),
    )
