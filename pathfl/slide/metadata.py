"""Slide metadata resolution: microns per pixel, objective power, vendor.

mpp is taken from, in order: a per-slide override, the vendor metadata the backend reports
(``openslide.mpp-x`` / ``tiffslide.mpp-x``, Aperio ``MPP`` in the description, OME-XML
``PhysicalSizeX`` in an OME-TIFF's description), the TIFF resolution tags. Values outside a
plausible range (e.g. 72 dpi of an ordinary TIFF) are ignored with a warning. A slide whose
mpp cannot be found raises :class:`SlideError` telling the user how to supply it."""

from __future__ import annotations

import functools
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from pathfl.slide.errors import SlideMetadataError

logger = logging.getLogger(__name__)

#: mpp values read from metadata outside this range are treated as missing (µm/px).
PLAUSIBLE_MPP = (0.05, 20.0)
#: |log2(mpp * objective / 10)| above this triggers the mismatch warning (20x ≈ 0.5 µm/px).
MISMATCH_LOG2 = 0.6

_UNIT_UM = {"inch": 25400.0, "centimeter": 10000.0, "millimeter": 1000.0, "micrometer": 1.0}
#: OME ``PhysicalSizeXUnit`` values (the schema's default unit is µm)
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}
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
    description = str(props.get("tiff.ImageDescription", ""))
    m = _APERIO_MPP.search(description)
    if m:
        return _float(m.group(1)), "aperio"
    ome = _ome_attrs(description)
    if "PhysicalSizeX" in ome:
        scale = _OME_UNIT_UM.get(ome.get("PhysicalSizeXUnit", "µm"))
        mpp = _float(ome["PhysicalSizeX"])
        if scale is not None and mpp is not None:
            return mpp * scale, "ome"
    return None, ""


def _ome_attrs(description: str) -> dict[str, str]:
    """Attributes of the first ``Pixels`` and ``Objective`` elements of an OME-XML image
    description (``{}`` when the description is not OME-XML or does not parse)."""
    if "<OME" not in description[:2000]:
        return {}
    return dict(_parse_ome(description))


@functools.lru_cache(maxsize=4)
def _parse_ome(description: str) -> tuple[tuple[str, str], ...]:
    """Parsed once per slide: both mpp and objective power read it."""
    try:
        root = ET.fromstring(description.strip())
    except ET.ParseError:
        return ()
    attrs: dict[str, str] = {}
    for tag in ("Objective", "Pixels"):  # namespaced: match on the local name
        elem = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == tag), None)
        if elem is not None:
            attrs.update(elem.attrib)
    return tuple(attrs.items())


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
            raise SlideMetadataError(
                f"{where}: mpp override must be a positive number, got {override!r}"
            )
        return mpp, "override"
    mpp, source = mpp_from_vendor(props)
    mpp = _plausible(mpp, f"{source} metadata", where)
    if mpp is not None:
        return mpp, source
    mpp = _plausible(mpp_from_tiff_resolution(props), "TIFF resolution tags", where)
    if mpp is not None:
        return mpp, "tiff-resolution"
    raise SlideMetadataError(
        f"{where}: microns per pixel unknown (no vendor mpp, no usable TIFF resolution tags); "
        f"{MPP_HELP}"
    )


def objective_power(props: Mapping[str, object]) -> float | None:
    for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
        mag = _float(props.get(key))
        if mag is not None:
            return mag
    description = str(props.get("tiff.ImageDescription", ""))
    m = _APERIO_MAG.search(description)
    if m:
        return _float(m.group(1))
    return _float(_ome_attrs(description).get("NominalMagnification"))


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
