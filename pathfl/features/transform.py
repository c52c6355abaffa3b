"""How tiles are fed to an encoder: the pixel transform recorded in each features file
(:func:`transform_for`) and the warning for tiles far from the encoder's native input size."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pathfl.features.dataset import SlideJob
from pathfl.features.encoders import EncoderSpec
from pathfl.formats.coords_h5 import tile_geometry

logger = logging.getLogger(__name__)

INTERPOLATION = "bilinear"
#: tiles more than this factor smaller or larger than the encoder's native input draw a warning
TILE_SIZE_FACTOR = 2.0


def transform_for(
    spec: EncoderSpec, stain: dict[str, Any] | None = None
) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    """Pixel transform for a slide: tiles are resized to the coords file's ``tile_size`` (or to
    the encoder's fixed input size), stain-normalised/augmented when ``stain`` (the record of
    a :class:`~pathfl.features.stain_ref.StainTransform`) says so, then normalised with the
    encoder's mean/std."""

    def fn(attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        out_px = spec.input_px if spec.fixed_input_px else tile_geometry(attrs).tile_size
        return out_px, {
            "resize": out_px,
            "interpolation": INTERPOLATION,
            **(stain or {}),
            "mean": list(spec.mean),
            "std": list(spec.std),
        }

    return fn


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
        f"{native} px: features may be poor (re-tile with --tile-size {native} or use an "
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
