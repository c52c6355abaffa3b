"""Slide metadata resolution: microns per pixel, objective power, vendor.

mpp is taken from, in order: a per-slide override, the vendor metadata the backend reports
(``openslide.mpp-x`` / ``tiffslide.mpp-x``, Aperio ``MPP`` in the description), the TIFF
resolution tags. Values outside a plausible range (e.g. 72 dpi of an ordinary TIFF) are
ignored with a warning. A slide whose mpp cannot be found raises :class:`SlideError` telling
the user how to supply it."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

from pathfl.slide.base import SlideError

logger = logging.getLogger(__name__)

#: mpp values read from metadata outside this range are treated as missing (µm/px).
PLAUSIBLE_MPP = (0.05, 20.0)
#: |log2(mpp * objective / 10)| above this triggers the mismatch warning (20x ≈ 0.5 µm/px).
MISMATCH_LOG2 = 0.6

_UNIT_UM = {"inch": 25400.0, "centimeter": 10000.0, "millimeter": 1000.0, "micrometer": 1.0}
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")
_APERIO_MAG = re.compile(r"\|\s*AppMag\s*=\s*([0-9.eE+-]+)")

MPP_HELP = (
    "supply it with --mpp-override X (one value for every slide given) or "
    "--slides-csv FILE with columns slide_id,path,mpp"
)


def _float(value: object) -> float | None:
    try:
        f = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _plausible(mpp: float | None, source: str, where: str) -> float | None:
    if mpp is None:
        return None
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        logger.warning("%s: ignoring implausible mpp %.4g from %s", where, mpp, source)
        return None
    return mpp


def mpp_from_vendor(props: Mapping[str, object]) -> tuple[float | None, str]:
    """mpp from the backend's standard properties or the Aperio description."""
    for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
        mpp = _float(props.get(key))
        if mpp is not None:
            return mpp, "vendor"
    mpp = _float(props.get("aperio.MPP"))
    if mpp is not None:
        return mpp, "aperio"
    m = _APERIO_MPP.search(str(props.get("tiff.ImageDescription", "")))
    if m:
        return _float(m.group(1)), "aperio"
    return None, ""


def mpp_from_tiff_resolution(props: Mapping[str, object]) -> float | None:
    """mpp from TIFF ``XResolution`` (pixels per unit) and ``ResolutionUnit``."""
    unit = str(props.get("tiff.ResolutionUnit", "")).strip().lower()
    res = _float(props.get("tiff.XResolution"))
    if res is None or unit not in _UNIT_UM:
        return None
    return _UNIT_UM[unit] / res


def resolve_mpp(
    props: Mapping[str, object], *, override: float | None, where: str
) -> tuple[float, str]:
    """Return ``(mpp, source)`` following the resolution chain, or raise SlideError."""
    if override is not None:
        mpp = _float(override)
        if mpp is None:
            raise SlideError(f"{where}: mpp override must be a positive number, got {override!r}")
        return mpp, "override"
    mpp, source = mpp_from_vendor(props)
    mpp = _plausible(mpp, f"{source} metadata", where)
    if mpp is not None:
        return mpp, source
    mpp = _plausible(mpp_from_tiff_resolution(props), "TIFF resolution tags", where)
    if mpp is not None:
        return mpp, "tiff-resolution"
    raise SlideError(
        f"{where}: microns per pixel unknown (no vendor mpp, no usable TIFF resolution tags); "
        f"{MPP_HELP}"
    )


def objective_power(props: Mapping[str, object]) -> float | None:
    for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
        mag = _float(props.get(key))
        if mag is not None:
            return mag
    m = _APERIO_MAG.search(str(props.get("tiff.ImageDescription", "")))
    return _float(m.group(1)) if m else None


def vendor(props: Mapping[str, object]) -> str:
    for key in ("openslide.vendor", "tiffslide.vendor"):
        v = props.get(key)
        if v:
            return str(v)
    return ""


def check_mpp_objective(mpp: float, objective: float | None, where: str) -> str | None:
    """Warn (and return the message) when mpp and objective power disagree, e.g. a slide at
    0.25 µm/px labelled 20x. Nominal: 10x ≈ 1.0 µm/px, 20x ≈ 0.5, 40x ≈ 0.25."""
    if objective is None:
        return None
    expected = 10.0 / objective
    if abs(math.log2(mpp / expected)) <= MISMATCH_LOG2:
        return None
    msg = (
        f"{where}: mpp {mpp:.4g} µm/px disagrees with objective power {objective:g}x "
        f"(expected about {expected:.3g} µm/px); tiling trusts the mpp"
    )
    logger.warning(msg)
    return msg
