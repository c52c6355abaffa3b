"""How tiles are fed to an encoder: the pixel transform recorded in each features file
(:func:`transform_for`), the native-resolution check (:func:`check_resolution`: tiles must be
at the encoder's native µm/px and px) and the warning for tiles far from an ImageNet
encoder's input size."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from pathfl.config import ConfigError
from pathfl.features.dataset import SlideJob
from pathfl.features.encoders import EncoderSpec
from pathfl.formats.coords_h5 import tile_geometry

logger = logging.getLogger(__name__)

INTERPOLATION = "bilinear"
#: tiles more than this factor smaller or larger than the encoder's native input draw a warning
TILE_SIZE_FACTOR = 2.0
#: relative tolerance of the native-resolution check, on the tiles' µm/px and on their px
RESOLUTION_TOLERANCE = 0.10
ALLOW_FLAG = "--allow-resolution-mismatch"


def transform_for(
    spec: EncoderSpec,
    stain: dict[str, Any] | None = None,
    *,
    allow_resolution_mismatch: bool = False,
) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    """Pixel transform for a slide: tiles are resized to the coords file's ``tile_size`` (or to
    the encoder's fixed input size), stain-normalised/augmented when ``stain`` (the record of
    a :class:`~pathfl.features.stain_ref.StainTransform`) says so, then normalised with the
    encoder's mean/std. A slide whose tiles are not at the encoder's native resolution, allowed
    by ``allow_resolution_mismatch``, gets a ``resolution_mismatch`` entry (so its features have
    their own fingerprint)."""

    def fn(attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        out_px = spec.input_px if spec.fixed_input_px else tile_geometry(attrs).tile_size
        transform: dict[str, Any] = {
            "resize": out_px,
            "interpolation": INTERPOLATION,
            **(stain or {}),
            "mean": list(spec.mean),
            "std": list(spec.std),
        }
        mismatch = resolution_mismatch(spec, attrs)
        if mismatch and allow_resolution_mismatch:
            transform["resolution_mismatch"] = mismatch
        return out_px, transform

    return fn


def tile_resolution(attrs: dict[str, Any]) -> tuple[float | None, int]:
    """``(µm/px, px)`` of a coords file's tiles as the encoder gets them: ``mpp_level0 ×
    patch_size_level0 / tile_size`` (None when the slide's µm/px is unknown) and ``tile_size``."""
    try:
        px = int(attrs.get("tile_size") or 0)
    except (TypeError, ValueError):
        return None, 0
    try:
        mpp = float(attrs["mpp_level0"]) * float(attrs["patch_size_level0"]) / px
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, px
    return (mpp if math.isfinite(mpp) and mpp > 0 else None), px


def resolution_mismatch(spec: EncoderSpec, attrs: dict[str, Any]) -> dict[str, Any] | None:
    """None when the tiles are within :data:`RESOLUTION_TOLERANCE` of the encoder's native px
    and of one of its native µm/px, or when it has none (ImageNet CNNs, ``timm:<model>``,
    models whose authors do not state one); else what the tiles and the encoder have."""
    if not spec.native_mpp:
        return None
    mpp, px = tile_resolution(attrs)
    px_ok = px > 0 and abs(px / spec.input_px - 1) <= RESOLUTION_TOLERANCE
    mpp_ok = mpp is not None and any(
        abs(mpp / m - 1) <= RESOLUTION_TOLERANCE for m in spec.native_mpp
    )
    if px_ok and mpp_ok:
        return None
    return {
        "tile_mpp": None if mpp is None else round(mpp, 4),
        "tile_px": px,
        "native_mpp": list(spec.native_mpp),
        "native_px": spec.input_px,
    }


def _describe(m: dict[str, Any]) -> str:
    mpp = "unknown µm/px" if m["tile_mpp"] is None else f"{m['tile_mpp']:g} µm/px"
    return f"{m['tile_px']} px at {mpp}"


def check_resolution(jobs: list[SlideJob], spec: EncoderSpec, *, allow: bool) -> None:
    """Refuse (:class:`~pathfl.config.ConfigError`, exit 2, before anything is written) slides
    whose tiles are not at the encoder's native resolution, naming both; with ``allow`` they
    are resized to the encoder's input and the run only warns."""
    bad = [(j.slide_id, m) for j in jobs if (m := resolution_mismatch(spec, j.attrs))]
    if not bad:
        return
    native = " or ".join(f"{m:g}" for m in spec.native_mpp)
    shown = ", ".join(f"{sid} ({_describe(m)})" for sid, m in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    what = (
        f"encoder {spec.name} was trained on {spec.input_px}-px tiles at {native} µm/px "
        f"(±{RESOLUTION_TOLERANCE:.0%}); {len(bad)} slide(s) were tiled otherwise: {shown}{more}"
    )
    if allow:
        logger.warning("%s; %s: tiles resized to %d px", what, ALLOW_FLAG, spec.input_px)
        return
    raise ConfigError(
        f"{what}. Re-tile with `pathfl tile --mpp {spec.native_mpp[0]:g} --tile-px "
        f"{spec.input_px}`, or pass {ALLOW_FLAG} to resize the tiles to {spec.input_px} px "
        "anyway (recorded in the features files' transform and fingerprint)"
    )


def tile_size_note(spec: EncoderSpec, tile_px: Any) -> str:
    """A warning when ``tile_px`` is far (over :data:`TILE_SIZE_FACTOR` either way) from the
    encoder's native input size (``input_px`` of its registry entry); "" otherwise."""
    try:
        tile_px = int(tile_px)
    except (TypeError, ValueError):
        return ""
    native = int(spec.input_px or 0)
    if native <= 0 or tile_px <= 0 or 1 / TILE_SIZE_FACTOR <= tile_px / native <= TILE_SIZE_FACTOR:
        return ""
    how = f"resized to {native} px for" if spec.fixed_input_px else "fed as they are to"
    return (
        f"warning: {tile_px}-px tiles {how} encoder {spec.name}, whose native input is "
        f"{native} px: features may be poor (re-tile with --tile-px {native} or use an "
        "encoder made for this size)"
    )


def warn_tile_sizes(jobs: list[SlideJob], spec: EncoderSpec) -> None:
    """Log :func:`tile_size_note` once per distinct note, with the number of slides."""
    by_note: dict[str, int] = {}
    for job in jobs:
        note = tile_size_note(spec, job.attrs.get("tile_size"))
        if note:
            by_note[note] = by_note.get(note, 0) + 1
    for note, n in by_note.items():
        logger.warning("%d slide(s): %s", n, note)
