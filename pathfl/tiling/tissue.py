"""Tissue detection on a low-resolution overview of a slide.

HSV saturation → median blur → threshold (Otsu, clipped to a plausible band, or fixed) →
morphological closing → removal of small objects and filling of small holes → optional
removal of pen marks (blue, green, black ink). Every size is physical (µm, µm²), so the same
parameters work for 20x and 40x slides."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from pathfl.slide.base import Slide, SlideError
from pathfl.tiling.params import TissueParams

logger = logging.getLogger(__name__)


@dataclass
class TissueMask:
    """Boolean tissue mask of a slide; ``scale_x/scale_y`` = level-0 px per mask px."""

    mask: np.ndarray
    scale_x: float
    scale_y: float
    threshold: float

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def polygons_level0(self, *, min_points: int = 3) -> list[list[np.ndarray]]:
        """Tissue polygons as lists of rings [exterior, hole, ...], each (K, 2) float level-0
        (x, y) coordinates of mask-pixel corners."""
        m = self.mask.view(np.uint8)  # findContours leaves its input unchanged (OpenCV >= 3.2)
        contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is None:
            return []
        hierarchy = hierarchy[0]
        scale = np.array([self.scale_x, self.scale_y])
        polys: dict[int, list[np.ndarray]] = {}
        for i, c in enumerate(contours):
            if len(c) < min_points:
                continue
            ring = (c[:, 0, :].astype(np.float64) + 0.5) * scale
            parent = hierarchy[i][3]
            if parent < 0:
                polys.setdefault(i, []).insert(0, ring)
            elif len(contours[parent]) >= min_points:
                polys.setdefault(parent, []).append(ring)
        return [rings for rings in polys.values() if rings]


def read_overview(slide: Slide, mpp: float) -> np.ndarray:
    """RGB uint8 image of the whole slide at ``mpp`` µm/px (never finer than level 0)."""
    if slide.mpp is None:
        raise SlideError(f"{slide.path}: microns per pixel unknown")
    w0, h0 = slide.dimensions
    ds = max(mpp / slide.mpp, 1.0)
    return slide.read_downsampled((max(1, round(w0 / ds)), max(1, round(h0 / ds))))


def _odd(n: float) -> int:
    k = max(1, round(n))
    return k if k % 2 else k + 1


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Blue, green and black ink on an RGB overview."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    blue = (b - r > 60) & (b - g > 40) & (r < 110)
    green = (g - r > 20) & (g - b > 10) & (g < 200)
    black = np.max(rgb, axis=2) < 60
    return blue | green | black


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    if min_px <= 1:
        return mask
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """``mask`` with background components smaller than ``max_px`` (not touching the border)
    set; ``mask`` is modified in place (and returned)."""
    if max_px <= 0:
        return mask
    inv = ~mask
    _n, labels, stats, _ = cv2.connectedComponentsWithStats(inv.view(np.uint8), connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] < max_px
    # a background component touching the border is glass, not a hole
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small[border] = False
    small[0] = False  # label 0 = tissue pixels
    holes = small[labels]
    del labels  # the int32 label image is the largest array here
    holes &= inv
    del inv
    mask |= holes
    return mask


@dataclass
class Saturation:
    """What tissue detection needs from an overview: its HSV saturation (uint8) and, when pen
    removal is on, its ink mask; the RGB overview can be freed once this exists."""

    sat: np.ndarray
    pen: np.ndarray | None = None


def overview_saturation(rgb: np.ndarray, *, remove_pen: bool, rows: int = 256) -> Saturation:
    """HSV saturation of ``rgb`` (OpenCV's) and the pen mask when ``remove_pen``, both computed
    ``rows`` rows at a time so no full-size HSV or int16 image is ever held."""
    h, w = rgb.shape[:2]
    sat = np.empty((h, w), dtype=np.uint8)
    pen = np.empty((h, w), dtype=bool) if remove_pen else None
    for y in range(0, h, rows):
        strip = rgb[y : y + rows]
        sat[y : y + rows] = cv2.cvtColor(strip, cv2.COLOR_RGB2HSV)[..., 1]
        if pen is not None:
            pen[y : y + rows] = pen_mask(strip)
    return Saturation(sat=sat, pen=pen)


def detect_tissue_saturation(s: Saturation, params: TissueParams, *, mpp: float) -> TissueMask:
    """Tissue mask from the saturation of an overview whose pixels are ``mpp`` µm wide (scale
    1). Intermediates are released as soon as the next step exists (``s.sat`` is dropped)."""
    sat, s.sat = s.sat, np.zeros((0, 0), np.uint8)
    k = _odd(params.blur_um / mpp)
    if k > 1:
        sat = cv2.medianBlur(sat, min(k, 255))
    if params.saturation_threshold is not None:
        thr = params.saturation_threshold * 255
    else:
        otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        thr = float(np.clip(otsu, params.min_saturation * 255, params.max_saturation * 255))
    mask = sat > thr
    del sat
    if s.pen is not None and s.pen.any():
        pen = cv2.dilate(s.pen.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        mask &= ~pen
    r = round(params.close_um / mpp)
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        # closing a 0/1 image gives a 0/1 image: viewed as bool without a copy
        mask = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_CLOSE, kernel).view(bool)
    px_area = mpp * mpp
    mask = _clean_within_bbox(
        mask,
        min_px=round(params.min_object_um2 / px_area),
        max_hole_px=round(params.max_hole_um2 / px_area),
    )
    return TissueMask(mask=mask, scale_x=1.0, scale_y=1.0, threshold=thr / 255)


def _clean_within_bbox(mask: np.ndarray, *, min_px: int, max_hole_px: int) -> np.ndarray:
    """Small-object removal and hole filling on the tissue's bounding box plus a 1-px margin
    only (the result is the same as on the whole mask: every tissue piece lies inside, and a
    background piece touching the box's edge reaches the slide's border through the glass
    around the box); on a slide with little tissue the connected-component passes shrink."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return mask
    y0, y1 = max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2)
    x0, x1 = max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2)
    box = np.ascontiguousarray(mask[y0:y1, x0:x1])
    box = _fill_small_holes(_remove_small(box, min_px), max_hole_px)
    mask[:] = False
    mask[y0:y1, x0:x1] = box
    return mask


def detect_tissue_rgb(rgb: np.ndarray, params: TissueParams, *, mpp: float) -> TissueMask:
    """Tissue mask of an RGB overview whose pixels are ``mpp`` µm wide (scale 1)."""
    s = overview_saturation(rgb, remove_pen=params.remove_pen)
    return detect_tissue_saturation(s, params, mpp=mpp)


def detect_tissue(
    slide: Slide,
    params: TissueParams | None = None,
    *,
    overview: np.ndarray | None = None,
    saturation: Saturation | None = None,
) -> TissueMask:
    """Tissue mask of ``slide`` at ``params.mask_mpp`` (or from a given overview read at that
    mpp, or from its :func:`overview_saturation`, which this consumes). ``scale_x/scale_y`` map
    mask pixels to level-0 pixels."""
    params = params or TissueParams()
    if slide.mpp is None:
        raise SlideError(f"{slide.path}: microns per pixel unknown")
    mpp = max(params.mask_mpp, slide.mpp)
    if saturation is None:
        rgb = overview if overview is not None else read_overview(slide, mpp)
        saturation = overview_saturation(rgb, remove_pen=params.remove_pen)
        del rgb
    h, w = saturation.sat.shape
    tm = detect_tissue_saturation(saturation, params, mpp=mpp)
    w0, h0 = slide.dimensions
    tm.scale_x, tm.scale_y = w0 / w, h0 / h
    logger.debug(
        "%s: tissue %.1f%% of the slide (threshold %.3f)",
        slide.slide_id,
        100 * tm.tissue_fraction,
        tm.threshold,
    )
    return tm
