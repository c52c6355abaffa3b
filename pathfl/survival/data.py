"""Clinical table + features files -> patient bags for survival MIL.

The clinical CSV (DESIGN.md) has one row per slide: ``patient_id, slide_id, time, event`` and
optional covariate columns (plus an optional ``site`` column that is never a covariate).
Validation is strict: every problem is collected and reported with its CSV line, patient id and
slide id in one :class:`ClinicalError`; no row is ever dropped silently.

A patient's bag is the union of the tiles of all their slides' features files
(``<features_dir>/<slide_id>.h5``, datasets ``features`` and ``coords``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("patient_id", "slide_id", "time", "event")
RESERVED_COLUMNS = (*REQUIRED_COLUMNS, "site")


class ClinicalError(ValueError):
    """The clinical table (or its link to the features files) has problems; ``problems`` lists
    one human-readable line per bad row / slide."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        head = f"{source}: {len(self.problems)} problem(s) in the clinical table"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class ClinicalRow:
    """One validated slide row. ``line`` is the 1-based CSV line (header = line 1)."""

    line: int
    patient_id: str
    slide_id: str
    time: float
    event: int
    site: str | None
    covariates: dict[str, float]


@dataclass
class ClinicalTable:
    """A validated clinical table: slide rows grouped into patients."""

    path: str
    rows: list[ClinicalRow]
    covariate_columns: list[str]

    @property
    def patient_ids(self) -> list[str]:
        """Patients in order of first appearance."""
        return list(dict.fromkeys(r.patient_id for r in self.rows))

    def rows_of(self, patient_id: str) -> list[ClinicalRow]:
        return [r for r in self.rows if r.patient_id == patient_id]

    def __len__(self) -> int:
        return len(self.patient_ids)


@dataclass
class PatientBag:
    """All tiles of one patient. ``features`` keeps the file dtype (float32 or float16);
    ``tile_slide_index[i]`` says which of ``slide_ids`` tile ``i`` comes from; ``coords`` are
    level-0 (x, y) of each tile in its own slide."""

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

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


# ---------------------------------------------------------------------------------------------
# clinical table


def _parse_float(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load_clinical(
    path: str | os.PathLike[str], *, covariates: Sequence[str] | None = None
) -> ClinicalTable:
    """Read and validate a clinical CSV. ``covariates``: the columns to use (and validate as
    finite numbers) as covariates; default: every column that is not reserved — pass ``[]``
    when the table has free-text columns and no covariates are used. Raises
    :class:`ClinicalError` listing every bad row, or ``FileNotFoundError``."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clinical table not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        raw_rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    src = str(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ClinicalError(
            src, [f"missing required column(s) {', '.join(missing)}; found {', '.join(header)}"]
        )
    cov_cols = (
        [c for c in header if c not in RESERVED_COLUMNS] if covariates is None else list(covariates)
    )
    unknown = [c for c in cov_cols if c not in header or c in RESERVED_COLUMNS]
    if unknown:
        raise ClinicalError(src, [f"covariate column(s) not usable: {', '.join(unknown)}"])
    if not raw_rows:
        raise ClinicalError(src, ["table has no data rows"])

    problems: list[str] = []
    rows: list[ClinicalRow] = []
    seen_slides: dict[str, int] = {}
    for i, r in enumerate(raw_rows):
        line = i + 2
        pid, sid = r.get("patient_id", ""), r.get("slide_id", "")
        where = f"line {line} (patient_id={pid or '?'}, slide_id={sid or '?'})"
        bad: list[str] = []
        if not pid:
            bad.append("empty patient_id")
        if not sid:
            bad.append("empty slide_id")
        elif sid in seen_slides:
            bad.append(f"duplicate slide_id (also on line {seen_slides[sid]})")
        else:
            seen_slides[sid] = line
        t = _parse_float(r.get("time", ""))
        if r.get("time", "") == "":
            bad.append("missing time")
        elif t is None:
            bad.append(f"time {r['time']!r} is not a number")
        elif t <= 0:
            bad.append(f"time {t:g} must be > 0")
        ev_txt = r.get("event", "")
        ev = _parse_float(ev_txt)
        if ev_txt == "":
            bad.append("missing event")
        elif ev not in (0.0, 1.0):
            bad.append(f"event {ev_txt!r} must be 0 (censored) or 1 (event)")
        cov: dict[str, float] = {}
        for c in cov_cols:
            v = _parse_float(r.get(c, ""))
            if v is None:
                bad.append(f"covariate {c}={r.get(c, '')!r} is missing or not a finite number")
            else:
                cov[c] = v
        if bad:
            problems.append(f"{where}: {'; '.join(bad)}")
            continue
        site = r.get("site") or None
        rows.append(ClinicalRow(line, pid, sid, float(t), int(ev), site, cov))  # type: ignore[arg-type]

    # a patient's slides must agree on the patient-level outcome
    by_patient: dict[str, list[ClinicalRow]] = {}
    for row in rows:
        by_patient.setdefault(row.patient_id, []).append(row)
    for pid, prs in by_patient.items():
        for attr in ("time", "event", "site", "covariates"):
            values = {repr(getattr(p, attr)) for p in prs}
            if len(values) > 1:
                slides = ", ".join(p.slide_id for p in prs)
                problems.append(
                    f"patient_id={pid} (slides {slides}): rows disagree on {attr} "
                    f"({sorted(values)})"
                )
    if problems:
        raise ClinicalError(src, problems)
    return ClinicalTable(path=src, rows=rows, covariate_columns=cov_cols)


# ---------------------------------------------------------------------------------------------
# features files


def read_features_h5(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a DESIGN features file: ``(features (N, D), coords int64 (N, 2), attrs)``.
    float16 features stay float16 (converted per forward pass)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "features" not in f or "coords" not in f:
            raise ValueError(f"{path}: features file lacks the 'features' and/or 'coords' dataset")
        feats = f["features"][()]
        coords = f["coords"][()].astype(np.int64)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    if feats.dtype not in (np.float32, np.float16):
        feats = feats.astype(np.float32)
    if feats.ndim != 2 or coords.shape != (feats.shape[0], 2):
        raise ValueError(
            f"{path}: features {feats.shape} and coords {coords.shape} do not match (N,D)/(N,2)"
        )
    return feats, coords, attrs


def load_bags(
    features_dir: str | os.PathLike[str],
    clinical: ClinicalTable,
    *,
    covariates: Sequence[str] | None = None,
) -> list[PatientBag]:
    """Build one bag per patient from ``<features_dir>/<slide_id>.h5``. ``covariates``: the
    covariate columns to attach (default none; raw values — standardise with
    :class:`pathfl.survival.scaling.BagScaler` fitted on the training fold). Every slide must
    exist, be readable, and share the encoder and feature dimension; problems are reported
    together."""
    features_dir = Path(features_dir)
    cov_cols = list(covariates or [])
    bad_cov = [c for c in cov_cols if c not in clinical.covariate_columns]
    if bad_cov:
        raise ClinicalError(
            clinical.path,
            [f"covariate(s) {', '.join(bad_cov)} not in table ({clinical.covariate_columns})"],
        )
    problems: list[str] = []
    loaded: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    for row in clinical.rows:
        p = features_dir / f"{row.slide_id}.h5"
        where = f"line {row.line} (patient_id={row.patient_id}, slide_id={row.slide_id})"
        if not p.is_file():
            problems.append(f"{where}: no features file {p}")
            continue
        try:
            loaded[row.slide_id] = read_features_h5(p)
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{where}: unreadable features file {p}: {e}")
            continue
        if loaded[row.slide_id][0].shape[0] == 0:
            problems.append(f"{where}: features file {p} has 0 tiles")
    # every slide must come from the same encoder / dimension
    signatures: dict[tuple[str, int], list[str]] = {}
    for sid, (feats, _, attrs) in loaded.items():
        key = (str(attrs.get("encoder", "?")), int(feats.shape[1]))
        signatures.setdefault(key, []).append(sid)
    if len(signatures) > 1:
        desc = "; ".join(
            f"encoder={k[0]} dim={k[1]}: {', '.join(sorted(v)[:5])}"
            + (f" (+{len(v) - 5} more)" if len(v) > 5 else "")
            for k, v in sorted(signatures.items())
        )
        problems.append(f"features files mix encoders/feature dims: {desc}")
    if problems:
        raise ClinicalError(clinical.path, problems)

    bags: list[PatientBag] = []
    for pid in clinical.patient_ids:
        prs = clinical.rows_of(pid)
        feats = [loaded[r.slide_id][0] for r in prs]
        coords = [loaded[r.slide_id][1] for r in prs]
        index = np.concatenate([np.full(len(f), k, dtype=np.int64) for k, f in enumerate(feats)])
        cov = (
            np.array([prs[0].covariates[c] for c in cov_cols], dtype=np.float32)
            if cov_cols
            else None
        )
        first_attrs = loaded[prs[0].slide_id][2]
        bags.append(
            PatientBag(
                patient_id=pid,
                features=np.concatenate(feats, axis=0),
                time=prs[0].time,
                event=prs[0].event,
                covariates=cov,
                slide_ids=[r.slide_id for r in prs],
                tile_slide_index=index,
                coords=np.concatenate(coords, axis=0),
                site=prs[0].site,
                attrs={
                    "encoder": first_attrs.get("encoder"),
                    "fingerprint": first_attrs.get("fingerprint"),
                },
            )
        )
    logger.info(
        "loaded %d patients, %d slides, %d tiles from %s",
        len(bags),
        len(clinical.rows),
        sum(b.n_tiles for b in bags),
        features_dir,
    )
    return bags


def bags_fingerprint(bags: Sequence[PatientBag]) -> dict[str, Any]:
    """Encoder name, feature dim and the set of feature fingerprints of ``bags``."""
    fps = sorted({str(b.attrs.get("fingerprint")) for b in bags})
    return {
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
