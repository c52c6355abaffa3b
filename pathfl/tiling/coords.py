"""What a coords file records about a tiling (:func:`build_attrs`), and reading a tile back
the way the encoder sees it (:func:`read_tile`). The file format itself is
:mod:`pathfl.formats.coords_h5`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PIL import Image

from pathfl import __version__
from pathfl.formats.coords_h5 import tile_geometry
from pathfl.slide.base import Slide
from pathfl.tiling.grid import ReadPlan
from pathfl.tiling.params import GridParams, TissueParams


def _mag(value: float) -> int | float:
    """Nominal magnification: an integer when within 2 % of one (0.499 µm/px at 20x → 20)."""
    r = round(value)
    return int(r) if r > 0 and abs(value - r) / r < 0.02 else round(float(value), 3)


def build_attrs(
    slide: Slide,
    plan: ReadPlan,
    grid: GridParams,
    tissue: TissueParams,
    *,
    fingerprint: str,
) -> dict[str, Any]:
    """All attributes of a coords file for ``slide`` tiled with ``plan``."""
    assert slide.mpp is not None
    w0, h0 = slide.dimensions
    level_dim = np.asarray(slide.level_dimensions[plan.level], dtype=np.int64)
    level0_mag = slide.objective_power if slide.objective_power else 10.0 / slide.mpp
    return {
        "patch_size": int(plan.read_px),
        "patch_level": int(plan.level),
        "downsample": np.array([plan.downsample, plan.downsample], dtype=np.float64),
        "level_dim": level_dim,
        "downsampled_level_dim": level_dim.copy(),
        "name": slide.slide_id,
        "patch_size_level0": int(plan.size_l0),
        "level0_magnification": _mag(level0_mag),
        # magnification equivalent of the target resolution (10x ≈ 1 µm/px)
        "target_magnification": _mag(level0_mag * slide.mpp / grid.target_mpp),
        "overlap": int(grid.overlap_px),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "mpp_level0": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "level_mpp": float(plan.level_mpp),
        "target_mpp": float(grid.target_mpp),
        "tile_size": int(plan.tile_px),
        "read_size": int(plan.read_px),
        "step_level0": int(plan.step_l0),
        "min_tissue_fraction": float(grid.min_tissue_fraction),
        "mpp_tolerance": float(grid.mpp_tolerance),
        "backend": slide.backend,
        "vendor": slide.vendor,
        "slide_path": str(slide.path),
        "tissue_params": json.dumps(tissue.to_dict(), sort_keys=True),
        "pathfl_version": __version__,
        "fingerprint": fingerprint,
    }


def read_tile(slide: Slide, l0_xy: tuple[int, int], attrs: dict[str, Any]) -> Image.Image:
    """The tile at level-0 ``l0_xy`` as the encoder sees it: ``read_size`` px read at
    ``patch_level`` (attrs of its coords file), resized to ``tile_size`` only when the two
    differ."""
    geo = tile_geometry(attrs)
    img = slide.read_region(
        (int(l0_xy[0]), int(l0_xy[1])), geo.patch_level, (geo.read_size, geo.read_size)
    )
    if geo.read_size != geo.tile_size:
        img = img.resize((geo.tile_size, geo.tile_size), Image.Resampling.BILINEAR)
    return img
