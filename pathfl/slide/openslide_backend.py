"""OpenSlide backend (default): Aperio, Hamamatsu, Leica, MIRAX, Philips, Sakura, Trestle,
Ventana, DICOM and generic tiled TIFF via the openslide-bin library."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pathfl.slide.base import Slide, SlideError


class OpenSlideSlide(Slide):
    backend = "openslide"

    def _open(self) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...], dict[str, str]]:
        import openslide

        self._errors: tuple[type[BaseException], ...] = (openslide.OpenSlideError, OSError)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as e:
            raise SlideError(f"{self.path}: not a slide format OpenSlide can read") from e
        except (openslide.OpenSlideError, OSError, ValueError) as e:
            raise SlideError(f"{self.path}: OpenSlide cannot open it: {e}") from e
        return (
            tuple((int(w), int(h)) for w, h in self._osr.level_dimensions),
            tuple(float(d) for d in self._osr.level_downsamples),
            {str(k): str(v) for k, v in self._osr.properties.items()},
        )

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> Image.Image:
        try:
            rgba = self._osr.read_region((int(l0_xy[0]), int(l0_xy[1])), level, size_px)
        except self._errors as e:
            msg = f"{self.path}: cannot read region at {l0_xy} level {level}: {e}"
            raise SlideError(msg) from e
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:
            return rgba.convert("RGB")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba.convert("RGB"), mask=alpha)
        return white

    def read_region_array(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        return np.asarray(self.read_region(l0_xy, level, size_px))

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None
