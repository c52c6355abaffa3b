"""How the features of a local run were made, and checks that they were all made alike.

The fields of a fingerprint (:data:`FINGERPRINT_FIELDS`: encoder, weights hash, target mpp,
tile size, pathfl version, feature dim, stain normalisation method and reference hash) are
those the federation's site check (:mod:`pathfl.fl.trust.compat`) compares; a cohort's check
adds the storage dtype.
``pathfl train`` refuses a cohort whose features files differ on any of them, records them in
the run's ``config.json`` (``fingerprint``), and ``pathfl predict``/``heatmap`` refuse features
that differ from the run's on the fields that change what a feature means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Fields of a site fingerprint, in the order they are reported.
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "encoder",
    "weights_sha256",
    "target_mpp",
    "tile_size",
    "pathfl_version",
    "feature_dim",
    "stain_norm",
    "stain_ref_sha256",
)
#: value of a field that features files written before it existed lack (no normalisation)
FIELD_DEFAULTS: dict[str, str] = {"stain_norm": "none", "stain_ref_sha256": ""}
#: Fields whose values are compared as numbers (with a relative tolerance for floats).
_NUMERIC_FIELDS = {"target_mpp": float, "tile_size": int, "feature_dim": int}
MPP_REL_TOL = 1e-3

#: every field compared between the features files of one cohort
COHORT_FIELDS: tuple[str, ...] = (*FINGERPRINT_FIELDS, "dtype")
#: fields on which a run's features and new features may differ with a warning only
#: (float16 storage rounds features by ~1e-3; another pathfl version tiles the same way
#: unless another field says otherwise)
WARN_ONLY_FIELDS: tuple[str, ...] = ("pathfl_version", "dtype")
#: slides named per value in a message
_MAX_NAMED = 5


def _normalise(field_name: str, value: Any) -> Any:
    """Turn an attribute as read from HDF5 (bytes, numpy scalars) into a plain Python value."""
    if value is None or (isinstance(value, str) and value == ""):
        value = FIELD_DEFAULTS.get(field_name, value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    caster = _NUMERIC_FIELDS.get(field_name)
    if caster is not None and value is not None:
        try:
            return caster(value)
        except (TypeError, ValueError):
            return value
    return None if value is None else str(value)


def normalise_record(record: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint with exactly the :data:`FINGERPRINT_FIELDS` as plain Python values
    (missing fields become None)."""
    return {f: _normalise(f, record.get(f)) for f in FINGERPRINT_FIELDS}


def values_equal(field_name: str, a: Any, b: Any) -> bool:
    """Whether two values of ``field_name`` agree (floats: within :data:`MPP_REL_TOL`)."""
    if a is None or b is None:
        return a is b
    if _NUMERIC_FIELDS.get(field_name) is float:
        try:
            return math.isclose(float(a), float(b), rel_tol=MPP_REL_TOL)
        except (TypeError, ValueError):
            return a == b
    return a == b


def fingerprint_from_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The site fingerprint fields of one features file's attributes."""
    return normalise_record(attrs)


class FingerprintMismatchError(ValueError):
    """Features were made differently from those a run was trained on."""


def file_fingerprint(attrs: Mapping[str, Any], features: np.ndarray) -> dict[str, Any]:
    """The fingerprint of one features file (``feature_dim`` and ``dtype`` from the array)."""
    fp = fingerprint_from_attrs({**attrs, "feature_dim": int(features.shape[1])})
    fp["dtype"] = str(features.dtype)
    return fp


def _describe(slides: list[str], where: Mapping[str, str]) -> str:
    named = [where.get(s, f"slide {s}") for s in slides[:_MAX_NAMED]]
    more = f" (+{len(slides) - _MAX_NAMED} more)" if len(slides) > _MAX_NAMED else ""
    return f"{len(slides)} slide(s): " + ", ".join(named) + more


def mix_problems(
    fingerprints: Mapping[str, Mapping[str, Any]], where: Mapping[str, str] | None = None
) -> list[str]:
    """One message per field on which the slides' fingerprints differ, listing each value with
    the slides that have it (most common value first; ``where[slide]`` names a slide, e.g. by
    its CSV line). Empty when every slide agrees."""
    where = where or {}
    out = []
    for f in COHORT_FIELDS:
        groups: list[tuple[Any, list[str]]] = []
        for sid, fp in fingerprints.items():
            value = fp.get(f)
            for g in groups:
                if values_equal(f, g[0], value):
                    g[1].append(sid)
                    break
            else:
                groups.append((value, [sid]))
        if len(groups) > 1:
            groups.sort(key=lambda g: -len(g[1]))
            desc = "; ".join(f"{f}={v!r} in {_describe(s, where)}" for v, s in groups)
            out.append(f"features files mix {f} values (all must be made alike): {desc}")
    return out


def check_run_fingerprint(
    run_fp: Mapping[str, Any] | None, features_fp: Mapping[str, Any], *, source: str, run: str
) -> list[str]:
    """Compare the features about to be scored (``source``) with the fingerprint recorded in
    ``run``'s config.json. Raises :class:`FingerprintMismatchError` naming every differing field
    with both values; returns warnings (warn-only fields, fields the run does not record)."""
    run_fp = dict(run_fp or {})
    errors, warnings, unrecorded = [], [], []
    for f in COHORT_FIELDS:
        if f not in run_fp and f not in FIELD_DEFAULTS:
            unrecorded.append(f)
            continue
        here, there = features_fp.get(f), _normalise(f, run_fp.get(f))
        if values_equal(f, here, there):
            continue
        text = f"{f}={here!r} here but {there!r} in the run's training features"
        (warnings if f in WARN_ONLY_FIELDS else errors).append(text)
    if errors:
        raise FingerprintMismatchError(
            f"{source}: features were made differently from those {run} was trained on: "
            + "; ".join(errors)
            + " — tile and extract these slides with the run's settings (see its config.json)"
        )
    notes = [f"{source}: {w}" for w in warnings]
    key = [f for f in unrecorded if f not in WARN_ONLY_FIELDS]
    if key:
        notes.append(f"{run} records no {', '.join(key)} (an older run): not checked")
    for n in notes:
        logger.warning("%s", n)
    return notes
