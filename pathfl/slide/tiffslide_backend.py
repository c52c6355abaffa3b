"""tiffslide backend: pure-Python (tifffile + zarr) reader for TIFF-based formats (Aperio SVS,
generic pyramidal TIFF, Leica SCN, Ventana BIF, NDPI, Philips TIFF)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from PIL import Image

from pathfl.slide.base import Slide, SlideError


class TiffSlideSlide(Slide):
    backend = "tiffslide"

    def _open(self) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...], dict[str, str]]:
        import tiffslide

        if not self.path.is_file():
            raise SlideError(f"{self.path}: no such file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._ts = tiffslide.TiffSlide(str(self.path))
            return (
                tuple((int(w), int(h)) for w, h in self._ts.level_dimensions),
                tuple(float(d) for d in self._ts.level_downsamples),
                {str(k): str(v) for k, v in self._ts.properties.items() if v is not None},
            )
        except Exception as e:  # tifffile raises many kinds on non-TIFF / corrupt input
            raise SlideError(f"{self.path}: tiffslide cannot open it: {e}") from e

    def read_region_array(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3); pixels outside the level are white."""
        w, h = int(size_px[0]), int(size_px[1])
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        x0, y0 = int(l0_xy[0] / ds), int(l0_xy[1] / ds)  # as tiffslide maps it
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, lw), min(y0 + h, lh)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        try:
            arr = self._ts.read_region(
                (math.ceil(cx0 * ds), math.ceil(cy0 * ds)),  # maps back to (cx0, cy0)
                level,
                (cx1 - cx0, cy1 - cy0),
                as_array=True,
                padding=False,
            )
        except Exception as e:  # decoding errors come from tifffile/imagecodecs/zarr
            msg = f"{self.path}: cannot read region at {l0_xy} level {level}: {e}"
            raise SlideError(msg) from e
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        region = out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        hh, ww = min(region.shape[0], arr.shape[0]), min(region.shape[1], arr.shape[1])
        region[:hh, :ww] = arr[:hh, :ww, :3]
        return out

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> Image.Image:
        return Image.fromarray(self.read_region_array(l0_xy, level, size_px))

    def close(self) -> None:
        ts = getattr(self, "_ts", None)
        if ts is not None:
            ts.close()
            self._ts = None
