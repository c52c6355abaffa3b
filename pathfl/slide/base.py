"""The one slide interface every backend implements (openslide-python style: level-0
coordinates everywhere, units in names). Backends register in ``pathfl.slide.READERS``.

Owned by the tiling stage; the extraction stage reads tiles only through this interface."""

from __future__ import annotations

import abc
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pathfl.slide.errors import SlideError, SlideMetadataError
from pathfl.slide.metadata import check_mpp_objective, objective_power, resolve_mpp, vendor

__all__ = ["Slide", "SlideError", "SlideMetadataError", "slide_id_from_path"]


def slide_id_from_path(path: str | Path) -> str:
    """The default slide id: the file name without its extension (``a.svs`` → ``a``), without
    the ``.ome`` of an OME-TIFF (``a.ome.tif`` → ``a``); for a DICOM file, the name of its
    folder (a DICOM slide is a folder of files, one per level)."""
    path = Path(path)
    if path.suffix.lower() == ".dcm" and path.parent.name:
        return path.parent.name
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


class Slide(abc.ABC):
    """A whole-slide image opened read-only by one backend.

    The constructor opens the file (the backend's :meth:`_open`), then resolves its metadata
    from the backend's properties: microns per pixel (``mpp_override`` → vendor metadata →
    TIFF resolution tags → :class:`SlideMetadataError`), objective power and vendor.

    Attributes:
        path: the file.
        slide_id: file stem (or the id given by a slides CSV).
        backend: registry name of the reader ("openslide" | "tiffslide").
        level_dimensions: (width, height) per level, level 0 first.
        level_downsamples: downsample of each level relative to level 0.
        mpp: micrometres per pixel at level 0 (x), after overrides (a subclass that skips
            :meth:`_resolve_metadata` may leave it None).
        mpp_source: where ``mpp`` came from ("override", "vendor", "tiff-resolution", ...).
        objective_power: nominal magnification, None if unknown.
        vendor: scanner vendor string, "" if unknown.
        properties: the backend's raw metadata (str -> str).
        warnings: metadata problems found on opening (e.g. mpp vs objective mismatch).
    """

    backend: str = ""

    def __init__(
        self,
        path: str | Path,
        *,
        slide_id: str | None = None,
        mpp_override: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.slide_id = slide_id or slide_id_from_path(self.path)
        self.warnings: list[str] = []
        self.level_dimensions, self.level_downsamples, self.properties = self._open()
        self.objective_power: float | None = None
        self.vendor = ""
        try:
            self.mpp: float | None
            self.mpp, self.mpp_source = self._resolve_metadata(mpp_override)
        except BaseException:
            self.close()
            raise

    def _resolve_metadata(self, mpp_override: float | None) -> tuple[float, str]:
        """Check the levels, set objective power and vendor; return ``(mpp, mpp_source)``."""
        where = str(self.path)
        if not self.level_dimensions or min(self.dimensions) <= 0:
            raise SlideMetadataError(f"{where}: slide has no image levels")
        mpp, source = resolve_mpp(self.properties, override=mpp_override, where=where)
        self.objective_power = objective_power(self.properties)
        self.vendor = vendor(self.properties)
        msg = check_mpp_objective(mpp, self.objective_power, where)
        if msg:
            self.warnings.append(msg)
        return mpp, source

    @abc.abstractmethod
    def _open(
        self,
    ) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...], dict[str, str]]:
        """Open :attr:`path`; return ``(level_dimensions, level_downsamples, properties)``.
        Raises :class:`SlideError` when this backend cannot read the file."""

    # --- pixel access -------------------------------------------------------------------
    @abc.abstractmethod
    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> Image.Image:
        """RGB image of ``size_px`` (w, h) pixels at ``level`` whose top-left corner is at
        level-0 coordinates ``l0_xy``. Transparent/out-of-slide pixels come back white."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- derived geometry -----------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        if self.mpp is None:
            raise SlideError(f"{self.path}: microns per pixel unknown")
        return self.mpp * self.level_downsamples[level]

    def get_thumbnail(self, max_px: int) -> Image.Image:
        """RGB thumbnail whose longer side is at most ``max_px``."""
        w, h = self.dimensions
        scale = min(1.0, max_px / max(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return Image.fromarray(self.read_downsampled(size))

    def read_downsampled(self, size_px: tuple[int, int], *, block_px: int = 1024) -> np.ndarray:
        """The whole slide as an RGB uint8 array of ``size_px`` (w, h), area-averaged from the
        best pyramid level, read in blocks so single-level giant slides fit in memory."""
        out_w, out_h = int(size_px[0]), int(size_px[1])
        w0, h0 = self.dimensions
        level = self.best_level_for_downsample(min(w0 / out_w, h0 / out_h))
        lw, lh = self.level_dimensions[level]
        lds = self.level_downsamples[level]
        fx, fy = lw / out_w, lh / out_h  # level px per output px
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, block_px):
            for ox in range(0, out_w, block_px):
                ow, oh = min(block_px, out_w - ox), min(block_px, out_h - oy)
                lx0, ly0 = math.floor(ox * fx), math.floor(oy * fy)
                lx1 = max(lx0 + 1, min(lw, math.ceil((ox + ow) * fx)))
                ly1 = max(ly0 + 1, min(lh, math.ceil((oy + oh) * fy)))
                # ceil: level-0 coordinates that map back exactly onto (lx0, ly0)
                region = self.read_region(
                    (math.ceil(lx0 * lds), math.ceil(ly0 * lds)), level, (lx1 - lx0, ly1 - ly0)
                )
                if region.size != (ow, oh):
                    region = region.resize((ow, oh), Image.Resampling.BOX)
                out[oy : oy + oh, ox : ox + ow] = np.asarray(region.convert("RGB"))
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample is ≤ ``downsample`` (level 0 if none)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_region_array(
        self, l0_xy: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        return np.asarray(self.read_region(l0_xy, level, size_px).convert("RGB"))

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, levels={self.level_count}, "
            f"dims={self.dimensions}, mpp={self.mpp})"
        )
