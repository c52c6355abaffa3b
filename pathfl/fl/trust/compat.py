"""Site compatibility before round 1: every site reports the fingerprint of its features
(encoder, weights hash, target mpp, tile size, pathfl version, feature dim, stain normalisation
method and the SHA-256 of its shared reference); the server refuses
to mix sites whose features were not made the same way, or excludes the odd ones out.

Pure functions over plain dicts, so the ClientApp can send a record as a Flower ConfigRecord
and the server can check it without touching any site's files.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathfl.survival.fingerprint import (
    FINGERPRINT_FIELDS,
    fingerprint_from_attrs,
    normalise_record,
    values_equal,
)

logger = logging.getLogger(__name__)

POLICIES = ("refuse", "exclude")
#: what to do about a difference in these fields, added to the message
_HINTS = {
    "stain_norm": "every site must extract with the same --stain-norm",
    "stain_ref_sha256": "every site must extract with the same --stain-ref file (share the "
    "reference JSON fitted once, e.g. with `pathfl stain-ref fit`)",
}


class CompatibilityError(RuntimeError):
    """Sites are incompatible (or a site's own files disagree); the message names them."""


@dataclass
class CompatibilityResult:
    """Outcome of :func:`check_compatibility`.

    ``ok`` is False when the run must not start. ``accepted`` are the sites that may take part,
    ``excluded`` maps a site to the reasons it was left out, ``messages`` are human-readable lines
    naming the site and field for every difference found, ``reference`` is the fingerprint the
    accepted sites share; ``warnings`` name fields missing at every site (not compared)."""

    ok: bool
    policy: str
    accepted: list[str] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def raise_for_status(self) -> None:
        if not self.ok:
            raise CompatibilityError("incompatible sites: " + "; ".join(self.messages))


def site_fingerprint(features_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the fingerprint attributes of every ``*.h5`` features file in ``features_dir``.

    All files of one site must agree; otherwise :class:`CompatibilityError` names the file and
    the field that differs. Also returns ``n_files``."""
    from pathfl.formats.features_h5 import FeaturesFileError, read_header

    features_dir = Path(features_dir)
    files = sorted(features_dir.glob("*.h5"))
    if not files:
        raise CompatibilityError(f"{features_dir}: no features files (*.h5) found")
    record: dict[str, Any] | None = None
    first: Path | None = None
    problems: list[str] = []
    for path in files:
        try:
            header = read_header(path)
        except FeaturesFileError as e:
            raise CompatibilityError(f"{path}: cannot read features file: {e.problem}") from e
        attrs = {"feature_dim": header.feature_dim, **header.attrs}
        rec = fingerprint_from_attrs(attrs)
        if record is None:
            record, first = rec, path
            continue
        for k in FINGERPRINT_FIELDS:
            if not values_equal(k, rec[k], record[k]):
                problems.append(
                    f"{path.name}: {k}={rec[k]!r} differs from {first.name if first else '?'}"
                    f" ({record[k]!r})"
                )
    if problems:
        raise CompatibilityError(
            f"{features_dir}: features files do not agree: " + "; ".join(problems)
        )
    assert record is not None
    record["n_files"] = len(files)
    return record


def _reference(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per field, the value most sites share (ties broken by the first site in sorted order)."""
    ref: dict[str, Any] = {}
    sites = sorted(records)
    for f in FINGERPRINT_FIELDS:
        counts: Counter[str] = Counter(repr(records[s][f]) for s in sites)
        best = max(counts.values())
        for s in sites:  # deterministic tie-break
            if counts[repr(records[s][f])] == best:
                ref[f] = records[s][f]
                break
    return ref


def check_compatibility(
    records: dict[str, dict[str, Any]],
    *,
    policy: str = "refuse",
    min_sites: int = 1,
) -> CompatibilityResult:
    """Compare the fingerprints of all sites.

    ``policy="refuse"``: any difference (or missing field) makes ``ok`` False and no site is
    accepted. ``policy="exclude"``: sites that differ from the majority value of a field are
    excluded; ``ok`` is True when at least ``min_sites`` remain. Every message names the site and
    the field, e.g. ``site 'b': encoder='resnet50' but 'mobilenetv2' at sites a, c``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown compatibility policy {policy!r}; valid: {', '.join(POLICIES)}")
    if not records:
        return CompatibilityResult(ok=False, policy=policy, messages=["no site reported"])
    norm = {s: normalise_record(r) for s, r in records.items()}
    ref = _reference(norm)
    reasons: dict[str, list[str]] = {}
    warnings = [
        f"field {f} is missing at every site (not compared)"
        for f in FINGERPRINT_FIELDS
        if all(norm[s][f] is None for s in norm)
    ]
    for s in sorted(norm):
        for f in FINGERPRINT_FIELDS:
            v = norm[s][f]
            if v is None and ref[f] is None:
                continue
            if v is None:
                reasons.setdefault(s, []).append(f"site {s!r}: field {f} is missing")
            elif ref[f] is None or not values_equal(f, v, ref[f]):
                agree = [t for t in sorted(norm) if values_equal(f, norm[t][f], ref[f])]
                other = "missing" if ref[f] is None else repr(ref[f])
                hint = f" — {_HINTS[f]}" if f in _HINTS else ""
                reasons.setdefault(s, []).append(
                    f"site {s!r}: {f}={v!r} but {other} at site(s) {', '.join(agree)}{hint}"
                )
    messages = [m for s in sorted(reasons) for m in reasons[s]]
    if policy == "refuse":
        ok = not reasons
        accepted = sorted(norm) if ok else []
        excluded = {} if ok else reasons
    else:
        accepted = [s for s in sorted(norm) if s not in reasons]
        excluded = reasons
        ok = len(accepted) >= max(1, min_sites)
        if not ok:
            messages.append(
                f"only {len(accepted)} compatible site(s) left, fewer than min_sites={min_sites}"
            )
    for m in messages + warnings:
        logger.warning("compatibility: %s", m)
    return CompatibilityResult(
        ok=ok,
        policy=policy,
        accepted=accepted,
        excluded=excluded,
        messages=messages,
        reference=ref,
        warnings=warnings,
    )
