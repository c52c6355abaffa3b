#!/usr/bin/env python
"""A CLAM-style tiling reference for ``scripts/bench_tile.py`` (benchmark only; not pathfl).

An independent reimplementation (no CLAM code copied; CLAM is GPL-3) of what CLAM's
``create_patches_fp.py --seg --patch --stitch --patch_size 256`` does to one slide with its
built-in defaults (no ``--preset``), written from reading mahmoodlab/CLAM's
``create_patches_fp.py``, ``wsi_core/WholeSlideImage.py`` (``segmentTissue``, ``visWSI``,
``process_contours``/``process_contour``, ``isInContours``/``isInHoles``),
``wsi_core/util_classes.py`` (``isInContourV3_Easy``, "four_pt") and ``wsi_core/wsi_utils.py``
(``save_hdf5``, ``StitchCoords``/``DrawMapFromCoords``):

1. open with OpenSlide; per-level downsamples estimated from the level dimensions;
2. segmentation (``seg_level`` -1 → ``get_best_level_for_downsample(64)``, level 0 for a
   single-level slide): read the whole level, RGBA → HSV, median blur of the saturation
   (``mthresh`` 7), fixed binary threshold (``sthresh`` 8, no Otsu), closing with a 4×4 kernel
   (``close`` 4), ``findContours(RETR_CCOMP, CHAIN_APPROX_NONE)``; outer contours kept when
   their area minus their holes' exceeds ``a_t`` 100 reference patches, holes: the
   ``max_n_holes`` 8 largest children with area > ``a_h`` 16 reference patches, one reference
   patch being ``int(512² / (downsample_x · downsample_y))`` seg-level px (CLAM's
   ``ref_patch_size`` 512); contours scaled to level 0 by truncating to int32;
3. the mask picture CLAM always saves (``save_mask``): the whole ``vis_level`` (best level for
   64×) read, contours drawn in green and holes in blue, ``line_thickness`` 250 scaled by
   ``1/downsample``, saved as JPEG;
4. patching at level 0, 256 px, step 256, ``use_padding`` on: for every contour, the grid over
   its bounding rectangle; each grid point checked **in Python, one point at a time, in a new
   ``multiprocessing.Pool(min(4, cpu_count))`` per contour** (``starmap`` over one argument
   tuple per point, which pickles the contour and its holes for every point, as CLAM does):
   "four_pt" = any of the four points centre ± 64 px (``patch_size // 2 · 0.5``) has
   ``cv2.pointPolygonTest(contour) >= 0``, and the centre is in none of the contour's holes
   (``pointPolygonTest(hole) > 0``); a contour's points are written only when it has more
   than one (CLAM's ``len(results) > 1``), appended to ``<slide>.h5`` dataset ``coords``
   (int64, chunks (1, 2), maxshape (None, 2)) with attrs ``patch_size``, ``patch_level``,
   ``downsample``, ``downsampled_level_dim``, ``level_dim``, ``name``, ``save_path``;
5. stitching (``StitchCoords(downscale=64)``): a black canvas of the best level for 64×, and
   for every coordinate one ``read_region`` of the patch at that level pasted at
   ``ceil(coord / downsample)``; saved as JPEG.

The per-point Python checks, the per-contour process pools and the per-coordinate stitch reads
are what CLAM's wall time is made of, so they are kept, not vectorised.

Where it may differ from real CLAM: OpenCV, OpenSlide, h5py and Pillow versions; no pandas
process-list CSV, tqdm or per-slide progress printing; the pools are joined (CLAM only closes
them); points are handed to ``pointPolygonTest`` as float tuples; the mask and stitch JPEGs
use Pillow's default quality; it runs one slide, not a folder. No white/black patch filtering
(``process_contour`` does none). It reads the pixels through OpenSlide only.

    python scripts/clam_style_reference.py SLIDE OUT_DIR     # prints a JSON line of figures
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import openslide
from PIL import Image

logger = logging.getLogger(__name__)

Image.MAX_IMAGE_PIXELS = 933120000  # as CLAM sets it (large overview levels)


@dataclass(frozen=True)
class ClamParams:
    """CLAM's ``create_patches_fp.py`` defaults (its ``__main__`` block, no preset)."""

    sthresh: int = 8
    sthresh_up: int = 255
    mthresh: int = 7
    close_px: int = 4
    use_otsu: bool = False
    a_t: float = 100
    a_h: float = 16
    max_n_holes: int = 8
    ref_patch_px: int = 512
    line_thickness: int = 250
    patch_px: int = 256
    step_px: int = 256
    patch_level: int = 0
    stitch_downscale: int = 64
    seg_downsample: int = 64


#: CLAM's ``presets/*.csv`` (the fields this reference uses); "default" = no ``--preset``
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tcga": {
        "sthresh": 8,
        "mthresh": 7,
        "close_px": 4,
        "a_t": 16,
        "a_h": 4,
        "max_n_holes": 8,
        "line_thickness": 100,
    },
    "bwh_biopsy": {
        "sthresh": 15,
        "mthresh": 11,
        "close_px": 2,
        "a_t": 1,
        "a_h": 1,
        "max_n_holes": 2,
        "line_thickness": 50,
    },
    "bwh_resection": {
        "sthresh": 15,
        "mthresh": 11,
        "close_px": 4,
        "a_t": 100,
        "a_h": 16,
        "max_n_holes": 8,
        "line_thickness": 150,
    },
}


def level_downsamples(osr: openslide.OpenSlide) -> list[tuple[float, float]]:
    """Per-axis downsample of every level, estimated from the level sizes (as CLAM does)."""
    w0, h0 = osr.level_dimensions[0]
    return [(w0 / w, h0 / h) for w, h in osr.level_dimensions]


def best_level(osr: openslide.OpenSlide, downsample: float) -> int:
    """CLAM's choice of a level for a target downsample (level 0 for single-level slides)."""
    return 0 if osr.level_count == 1 else osr.get_best_level_for_downsample(downsample)


def _binary_tissue(rgba: np.ndarray, p: ClamParams) -> np.ndarray:
    sat = cv2.cvtColor(rgba, cv2.COLOR_RGB2HSV)[:, :, 1]
    blurred = cv2.medianBlur(sat, p.mthresh)
    if p.use_otsu:
        flags = cv2.THRESH_OTSU + cv2.THRESH_BINARY
        _, binary = cv2.threshold(blurred, 0, p.sthresh_up, flags)
    else:
        _, binary = cv2.threshold(blurred, p.sthresh, p.sthresh_up, cv2.THRESH_BINARY)
    if p.close_px > 0:
        kernel = np.ones((p.close_px, p.close_px), np.uint8)
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    return binary


def _keep_contours(
    contours: tuple, parents: np.ndarray, *, min_area: float, min_hole: float, max_holes: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Outer contours whose area net of their holes exceeds ``min_area``, with their largest
    ``max_holes`` holes above ``min_hole`` (areas in seg-level px)."""
    kept, kept_holes = [], []
    for idx in np.flatnonzero(parents == -1):
        children = [contours[j] for j in np.flatnonzero(parents == idx)]
        net = cv2.contourArea(contours[idx]) - sum(cv2.contourArea(c) for c in children)
        if net == 0 or not net > min_area:
            continue
        children.sort(key=cv2.contourArea, reverse=True)
        kept.append(contours[idx])
        kept_holes.append([c for c in children[:max_holes] if cv2.contourArea(c) > min_hole])
    return kept, kept_holes


def segment(
    osr: openslide.OpenSlide, p: ClamParams
) -> tuple[list[np.ndarray], list[list[np.ndarray]], int]:
    """Tissue contours and holes in level-0 px, and the segmentation level used."""
    level = best_level(osr, p.seg_downsample)
    rgba = np.asarray(osr.read_region((0, 0), level, osr.level_dimensions[level]))
    binary = _binary_tissue(rgba, p)
    del rgba
    sx, sy = level_downsamples(osr)[level]
    ref_area = int(p.ref_patch_px**2 / (sx * sy))
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return [], [], level
    parents = hierarchy[0][:, 3]
    kept, holes = _keep_contours(
        contours,
        parents,
        min_area=p.a_t * ref_area,
        min_hole=p.a_h * ref_area,
        max_holes=p.max_n_holes,
    )
    scale = np.array([sx, sy])
    return (
        [np.array(c * scale, dtype=np.int32) for c in kept],
        [[np.array(h * scale, dtype=np.int32) for h in hs] for hs in holes],
        level,
    )


def save_mask_picture(
    osr: openslide.OpenSlide,
    contours: list[np.ndarray],
    holes: list[list[np.ndarray]],
    path: Path,
    p: ClamParams,
) -> None:
    """The whole best-for-64× level with the contours (green) and holes (blue) drawn."""
    level = best_level(osr, p.seg_downsample)
    img = np.array(osr.read_region((0, 0), level, osr.level_dimensions[level]).convert("RGB"))
    sx, sy = level_downsamples(osr)[level]
    scale = np.array([1 / sx, 1 / sy])
    thickness = int(p.line_thickness * math.sqrt(scale[0] * scale[1]))
    scaled = [np.array(c * scale, dtype=np.int32) for c in contours]
    cv2.drawContours(img, scaled, -1, (0, 255, 0), thickness, lineType=cv2.LINE_8)
    for hs in holes:
        scaled_h = [np.array(h * scale, dtype=np.int32) for h in hs]
        cv2.drawContours(img, scaled_h, -1, (0, 0, 255), thickness, lineType=cv2.LINE_8)
    Image.fromarray(img).save(path)


class FourPointCheck:
    """ "four_pt": one of the four points centre ± patch/4 lies in or on the contour."""

    def __init__(self, contour: np.ndarray, patch_px: int) -> None:
        self.contour = contour
        self.patch_px = patch_px
        self.shift = int(patch_px // 2 * 0.5)

    def __call__(self, pt: np.ndarray) -> bool:
        cx, cy = float(pt[0] + self.patch_px // 2), float(pt[1] + self.patch_px // 2)
        s = self.shift
        for q in ((cx - s, cy - s), (cx + s, cy + s), (cx + s, cy - s), (cx - s, cy + s)):
            if cv2.pointPolygonTest(self.contour, q, False) >= 0:
                return True
        return False


def check_point(
    pt: np.ndarray, holes: list[np.ndarray], patch_px: int, check: FourPointCheck
) -> np.ndarray | None:
    """``pt`` when the patch passes the contour check and its centre is in no hole."""
    if not check(pt):
        return None
    centre = (float(pt[0] + patch_px / 2), float(pt[1] + patch_px / 2))
    for hole in holes:
        if cv2.pointPolygonTest(hole, centre, False) > 0:
            return None
    return pt


def _contour_points(
    contour: np.ndarray, holes: list[np.ndarray], ref_px: int, step_px: int
) -> np.ndarray:
    x0, y0, w, h = cv2.boundingRect(contour)
    xs, ys = np.meshgrid(
        np.arange(x0, x0 + w, step_px), np.arange(y0, y0 + h, step_px), indexing="ij"
    )
    candidates = np.stack([xs.ravel(), ys.ravel()], axis=1)
    check = FourPointCheck(contour, ref_px)
    with mp.Pool(min(4, mp.cpu_count())) as pool:
        found = pool.starmap(check_point, [(pt, holes, ref_px, check) for pt in candidates])
        pool.close()
        pool.join()
    return np.array([pt for pt in found if pt is not None])


def _append_h5(path: Path, coords: np.ndarray, attrs: dict[str, Any] | None) -> None:
    with h5py.File(path, "w" if attrs is not None else "a") as f:
        if "coords" not in f:
            ds = f.create_dataset(
                "coords", data=coords, maxshape=(None, 2), chunks=(1, 2), dtype=coords.dtype
            )
            for k, v in (attrs or {}).items():
                ds.attrs[k] = v
        else:
            ds = f["coords"]
            ds.resize(len(ds) + len(coords), axis=0)
            ds[-len(coords) :] = coords


def patch_contours(
    osr: openslide.OpenSlide,
    contours: list[np.ndarray],
    holes: list[list[np.ndarray]],
    h5_path: Path,
    p: ClamParams,
) -> int:
    """Grid points of every contour written to ``h5_path``; returns how many."""
    ds = level_downsamples(osr)[p.patch_level]
    ref_px = p.patch_px * int(ds[0])
    step_px = p.step_px * int(ds[0])
    attrs: dict[str, Any] | None = {
        "patch_size": p.patch_px,
        "patch_level": p.patch_level,
        "downsample": ds,
        "downsampled_level_dim": tuple(osr.level_dimensions[p.patch_level]),
        "level_dim": osr.level_dimensions[p.patch_level],
        "name": h5_path.stem,
        "save_path": str(h5_path.parent),
    }
    n = 0
    for contour, contour_holes in zip(contours, holes, strict=True):
        coords = _contour_points(contour, contour_holes, ref_px, step_px)
        if len(coords) > 1:
            _append_h5(h5_path, coords, attrs)
            attrs = None
            n += len(coords)
    return n


def stitch(osr: openslide.OpenSlide, h5_path: Path, path: Path, p: ClamParams) -> None:
    """Every patch read at the best level for ``stitch_downscale`` and pasted on a canvas."""
    level = osr.get_best_level_for_downsample(p.stitch_downscale)
    with h5py.File(h5_path, "r") as f:
        coords = f["coords"][:]
        patch_px, patch_level = (
            int(f["coords"].attrs["patch_size"]),
            f["coords"].attrs["patch_level"],
        )
    w, h = osr.level_dimensions[level]
    canvas = np.zeros((h, w, 3), np.uint8)
    ds = osr.level_downsamples[level]
    ref = int(patch_px * osr.level_downsamples[patch_level])
    size = (math.ceil(ref / ds), math.ceil(ref / ds))
    for coord in coords:
        tile = np.array(osr.read_region(tuple(int(c) for c in coord), level, size).convert("RGB"))
        cx, cy = np.ceil(coord / ds).astype(np.int32)
        crop = canvas[cy : cy + size[1], cx : cx + size[0]]
        crop[:] = tile[: crop.shape[0], : crop.shape[1]]
    Image.fromarray(canvas).save(path)


def run(slide: Path, out_dir: Path, params: ClamParams | None = None) -> dict[str, Any]:
    """Segment, save the mask picture, patch and stitch ``slide`` into ``out_dir``
    (``patches/``, ``masks/``, ``stitches/`` as CLAM); returns timings and counts."""
    p = params or ClamParams()
    for sub in ("patches", "masks", "stitches"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    name = slide.stem
    h5_path = out_dir / "patches" / f"{name}.h5"
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    try:
        contours, holes, seg_level = segment(osr, p)
        t["seg_s"] = time.perf_counter() - t0
        save_mask_picture(osr, contours, holes, out_dir / "masks" / f"{name}.jpg", p)
        t["mask_s"] = time.perf_counter() - t0 - sum(t.values())
        n = patch_contours(osr, contours, holes, h5_path, p)
        t["patch_s"] = time.perf_counter() - t0 - sum(t.values())
        if h5_path.is_file():  # CLAM stitches only when a coords file was written
            stitch(osr, h5_path, out_dir / "stitches" / f"{name}.jpg", p)
        t["stitch_s"] = time.perf_counter() - t0 - sum(t.values())
    finally:
        osr.close()
    return {
        "n_tiles": n,
        "n_contours": len(contours),
        "seg_level": seg_level,
        "wall_s": time.perf_counter() - t0,
        **t,
        "h5": str(h5_path) if h5_path.is_file() else None,
        "params": asdict(p),
    }


def peak_rss_mib() -> tuple[float, float]:
    """Peak RSS of this process and of its largest finished child, MiB (the pool workers, or
    the helper process that importing h5py starts, whichever is larger)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    args = ap.parse_args()
    fig = run(args.slide, args.out_dir, ClamParams(**PRESETS[args.preset]))
    fig["preset"] = args.preset
    fig["rss_mib"], fig["child_rss_mib"] = peak_rss_mib()
    print(json.dumps(fig, default=str))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
