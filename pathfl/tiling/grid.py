"""Tile grid at a target physical resolution.

Tiles are read at the coarsest pyramid level that is still at least as fine as the target
(level mpp ≤ target, within a relative tolerance); the read size is scaled so every tile
covers ``tile_px * target_mpp`` µm, then resized to ``tile_px``. When the level matches the
target within the tolerance, nothing is resized. Coordinates are level-0 top-left corners;
no tile pixels are read to build the grid (only the tissue mask)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathfl.slide.base import Slide, SlideError
from pathfl.tiling.params import GridParams
from pathfl.tiling.tissue import TissueMask


@dataclass(frozen=True)
class ReadPlan:
    """How tiles are read from one slide."""

    level: int
    level_mpp: float
    downsample: float
    read_px: int  # pixels read at ``level``
    tile_px: int  # pixels handed to the encoder
    size_l0: int  # tile side in level-0 px
    step_l0: int  # grid stride in level-0 px

    @property
    def resize(self) -> bool:
        return self.read_px != self.tile_px


def plan_read(slide: Slide, params: GridParams) -> ReadPlan:
    """Choose the read level and read size for ``params`` on ``slide``."""
    if slide.mpp is None:
        raise SlideError(f"{slide.path}: microns per pixel unknown")
    target, tol = params.target_mpp, params.mpp_tolerance
    candidates = [
        (slide.mpp * d, i)
        for i, d in enumerate(slide.level_downsamples)
        if slide.mpp * d <= target * (1 + tol)
    ]
    if not candidates:
        raise SlideError(
            f"{slide.path}: slide resolution {slide.mpp:.4g} µm/px is coarser than the target "
            f"{target:g} µm/px (tolerance {tol:g}); tiles would be upsampled. Use a larger --mpp."
        )
    level_mpp, level = max(candidates)
    ds = slide.level_downsamples[level]
    if abs(level_mpp / target - 1) <= tol:
        read_px = params.tile_px
    else:
        read_px = round(params.tile_px * target / level_mpp)
    overlap_read = round(params.overlap_px * read_px / params.tile_px)
    return ReadPlan(
        level=level,
        level_mpp=level_mpp,
        downsample=ds,
        read_px=read_px,
        tile_px=params.tile_px,
        size_l0=round(read_px * ds),
        step_l0=max(1, round((read_px - overlap_read) * ds)),
    )


def grid_coords(slide: Slide, plan: ReadPlan) -> np.ndarray:
    """All level-0 top-left corners of tiles lying fully inside the slide (and inside the
    read level), row-major, int64 (N, 2)."""
    w0, h0 = slide.dimensions
    lw, lh = slide.level_dimensions[plan.level]
    ds = plan.downsample
    # the tile must fit both in level 0 and in the read level
    max_x = min(w0 - plan.size_l0, math.floor((lw - plan.read_px) * ds))
    max_y = min(h0 - plan.size_l0, math.floor((lh - plan.read_px) * ds))
    if max_x < 0 or max_y < 0:
        return np.zeros((0, 2), dtype=np.int64)
    xs = np.arange(0, max_x + 1, plan.step_l0, dtype=np.int64)
    ys = np.arange(0, max_y + 1, plan.step_l0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def mask_integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean mask, (h + 1, w + 1) with a zero first row and column:
    int32 (4 bytes per pixel; the float64 cumsum it replaces needed ~24), int64-exact float64
    when the mask has 2**31 pixels or more. The counts are exact integers either way."""
    import cv2

    depth = cv2.CV_32S if mask.size < 2**31 else cv2.CV_64F
    return cv2.integral(np.ascontiguousarray(mask).view(np.uint8), sdepth=depth)


def tissue_fractions(coords: np.ndarray, size_l0: int, tissue: TissueMask) -> np.ndarray:
    """Fraction of each tile's area covered by the tissue mask (box-filtered integral image;
    partial mask pixels are counted in proportion)."""
    if len(coords) == 0:
        return np.zeros(0)
    integral = mask_integral(tissue.mask)
    mh, mw = tissue.mask.shape

    def area_to(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue area in [0, x) x [0, y) (mask px, fractional) by bilinear integral lookup."""
        x, y = np.clip(x, 0, mw), np.clip(y, 0, mh)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        x1, y1 = np.minimum(x0 + 1, mw), np.minimum(y0 + 1, mh)
        fx, fy = x - x0, y - y0
        top = integral[y0, x0] * (1 - fx) + integral[y0, x1] * fx
        bot = integral[y1, x0] * (1 - fx) + integral[y1, x1] * fx
        return top * (1 - fy) + bot * fy

    x0 = coords[:, 0] / tissue.scale_x
    y0 = coords[:, 1] / tissue.scale_y
    x1 = (coords[:, 0] + size_l0) / tissue.scale_x
    y1 = (coords[:, 1] + size_l0) / tissue.scale_y
    area = area_to(x1, y1) - area_to(x0, y1) - area_to(x1, y0) + area_to(x0, y0)
    return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0)
