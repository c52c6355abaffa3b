"""Write RGB arrays as real pyramidal whole-slide files that OpenSlide and tiffslide both read.

Two formats:
- ``svs``: Aperio-style SVS — tiled JPEG baseline, a stripped thumbnail as the second page,
  then the tiled reduced levels (NewSubfileType 0, as Aperio writes them), ImageDescription
  starting with ``Aperio Image Library`` and carrying ``MPP`` and ``AppMag``.
- ``tiff``: generic tiled JPEG TIFF pyramid (levels as successive pages, NewSubfileType 1 for
  reduced levels) with the mpp in the TIFF resolution tags (pixels per centimetre).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from pathfl.io import atomic_path

FORMATS = ("svs", "tiff")


def build_pyramid(rgb: np.ndarray, *, min_level_px: int = 512) -> list[np.ndarray]:
    """Level 0 then successive ×2 reductions until the longer side is ≤ ``min_level_px``."""
    levels = [rgb]
    while max(levels[-1].shape[:2]) > min_level_px:
        a = levels[-1]
        levels.append(
            cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    return levels


def _aperio_description(w: int, h: int, *, tile_px: int, quality: int, mpp: float) -> str:
    app_mag = round(10.0 / mpp)  # 0.25 µm/px ≈ 40x, 0.5 µm/px ≈ 20x
    return (
        f"Aperio Image Library v12.0.16 \r\n{w}x{h} [0,0 {w}x{h}] ({tile_px}x{tile_px}) "
        f"JPEG/RGB Q={quality}|AppMag = {app_mag}|MPP = {mpp:.4f}|ScannerType = pathfl-demo"
    )


def write_slide(
    path: str | Path,
    rgb: np.ndarray,
    *,
    mpp: float,
    fmt: str = "svs",
    jpeg_quality: int = 85,
    tile_px: int = 256,
) -> Path:
    """Write ``rgb`` (H, W, 3) uint8 as a pyramidal slide at ``path`` (atomically)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown slide format {fmt!r}; valid: {', '.join(FORMATS)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    path = Path(path)
    levels = build_pyramid(rgb)
    jpeg = {"compression": "jpeg", "compressionargs": {"level": int(jpeg_quality)}}
    h, w = rgb.shape[:2]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        if fmt == "svs":
            desc = _aperio_description(w, h, tile_px=tile_px, quality=jpeg_quality, mpp=mpp)
            common = {"photometric": "rgb", "description": desc, "metadata": None}
            tw.write(levels[0], tile=(tile_px, tile_px), subfiletype=0, **jpeg, **common)
            thumb = cv2.resize(
                rgb,
                (max(1, w * 768 // max(w, h)), max(1, h * 768 // max(w, h))),
                interpolation=cv2.INTER_AREA,
            )
            tw.write(thumb, rowsperstrip=16, **jpeg, **common)
            for lv in levels[1:]:
                tw.write(lv, tile=(tile_px, tile_px), subfiletype=0, **jpeg, **common)
        else:
            for i, lv in enumerate(levels):
                ppcm = 1e4 / (mpp * 2**i)
                tw.write(
                    lv,
                    tile=(tile_px, tile_px),
                    photometric="rgb",
                    resolution=(ppcm, ppcm),
                    resolutionunit="CENTIMETER",
                    subfiletype=0 if i == 0 else 1,
                    metadata=None,
                    **jpeg,
                )
    return path
