"""Synthetic whole-slide images for tests and benchmarks, written with tifffile.

Every stage's tests reuse these writers (import with ``from slides import ...``: pytest puts
``tests/`` on ``sys.path``; scripts add it themselves). Both OpenSlide (``generic-tiff`` and
``aperio`` drivers) and tiffslide read every file written here.

- :func:`synthetic_tissue` — an H&E-like RGB image: near-white background, pink stroma blobs
  with purple nuclei, optional pen marks. Deterministic for a given seed.
- :func:`write_tiled_tiff` — generic pyramidal tiled TIFF (one page per level, reduced levels
  flagged ``NewSubfileType=1``), resolution tags carrying the mpp (or none at all).
- :func:`write_svs` — Aperio-style SVS (``Aperio Image Library ...|AppMag = 40|MPP = 0.25``
  description, baseline + thumbnail + reduced tiled levels).
- :func:`write_procedural_tiff` — a large pyramidal JPEG slide rendered tile by tile (constant
  memory), for benchmarks (e.g. 40 960 x 40 960 px).
- :func:`downsample2` — 2x2 box downsample (the same tissue at twice the mpp).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

__all__ = [
    "TissueField",
    "downsample2",
    "synthetic_tissue",
    "write_blank_tiff",
    "write_procedural_tiff",
    "write_svs",
    "write_tiled_tiff",
]

BACKGROUND_RGB = (242, 241, 244)
_PURPLE = (92.0, 48.0, 130.0)
_M32 = np.uint64(0xFFFFFFFF)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) for integer lattice points."""
    h = (ix.astype(np.uint64) * np.uint64(0x8DA6B343)) ^ (
        iy.astype(np.uint64) * np.uint64(0xD8163841)
    )
    h = (h ^ np.uint64((seed * 0xCB1AB31F) & 0xFFFFFFFF)) & _M32
    h = (h ^ (h >> np.uint64(13))) & _M32
    h = (h * np.uint64(0x5BD1E995)) & _M32
    h = (h ^ (h >> np.uint64(15))) & _M32
    return h.astype(np.float64) / 4294967296.0


def _value_noise(ys: np.ndarray, xs: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) on the grid ``ys`` (1-D, rows) x ``xs`` (1-D, columns)
    of level-0 pixel coordinates. Lattice values are hashed once, then interpolated."""
    fy, fx = ys / cell, xs / cell
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = fy - iy, fx - ix
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)
    y0, x0 = iy.min(), ix.min()
    ly = np.arange(y0, iy.max() + 2) + 1_000_000
    lx = np.arange(x0, ix.max() + 2) + 1_000_000
    lattice = _hash01(lx[None, :], ly[:, None], seed).astype(np.float32)
    rx = ix - x0
    tx = tx.astype(np.float32)[None, :]
    rows = lattice[:, rx] + (lattice[:, rx + 1] - lattice[:, rx]) * tx  # x-interpolated
    ry = iy - y0
    top, bottom = rows[ry], rows[ry + 1]
    return top + (bottom - top) * ty.astype(np.float32)[:, None]


class TissueField:
    """Procedural H&E-like slide of ``height`` x ``width`` level-0 pixels; any window can be
    rendered at any downsample, so huge slides are written tile by tile.

    Tissue is a few smooth blobs (about a third of the area); nuclei are ~``nucleus_px``
    level-0 pixels wide. ``pen=True`` draws a blue ink stroke across the background."""

    def __init__(
        self,
        height: int,
        width: int,
        seed: int = 0,
        *,
        nucleus_px: float = 7.0,
        pen: bool = False,
        tissue_bias: float = 0.0,
    ) -> None:
        self.height, self.width, self.seed = int(height), int(width), int(seed)
        self.tissue_bias = tissue_bias  # > 0: less tissue (0.25: ~3 % of the area)
        self.nucleus_px = nucleus_px
        self.pen = pen
        self._blob_cell = max(self.height, self.width) / 5.0

    def tissue_score(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """> 0 inside tissue, on the grid of 1-D level-0 coordinates ``ys`` x ``xs``."""
        n = 0.65 * _value_noise(ys, xs, self._blob_cell, self.seed) + 0.35 * _value_noise(
            ys, xs, self._blob_cell / 3.1, self.seed + 1
        )
        # fade towards the borders so tissue sits on a glass margin
        cy, cx = (ys / self.height - 0.5) * 2, (xs / self.width - 0.5) * 2
        r = np.maximum(np.abs(cy)[:, None], np.abs(cx)[None, :])
        return n - 0.42 - self.tissue_bias - 0.45 * np.clip(r - 0.55, 0, None) / 0.45

    def render(
        self, y0: int, x0: int, height: int, width: int, downsample: float = 1.0
    ) -> np.ndarray:
        """uint8 RGB (height, width, 3) of the window whose top-left pixel is (x0, y0) at the
        given ``downsample`` (pixel coordinates of that level)."""
        ys = (np.arange(height) + y0 + 0.5) * downsample
        xs = (np.arange(width) + x0 + 0.5) * downsample
        score = self.tissue_score(ys, xs)
        tissue = np.clip(score / 0.03, 0, 1)
        stroma = 0.55 + 0.45 * _value_noise(ys, xs, 40.0, self.seed + 2)
        nuc = np.clip((_value_noise(ys, xs, self.nucleus_px, self.seed + 3) - 0.72) / 0.08, 0, 1)
        grain = (_value_noise(ys, xs, 3.0, self.seed + 4) - 0.5) * 10
        rgb = np.empty((height, width, 3), dtype=np.float32)
        pink_dark, pink_light = (236.0, 160.0, 200.0), (250.0, 215.0, 235.0)
        for c in range(3):
            pink = pink_light[c] + (pink_dark[c] - pink_light[c]) * stroma
            t_rgb = pink + (_PURPLE[c] - pink) * nuc
            rgb[..., c] = BACKGROUND_RGB[c] + (t_rgb - BACKGROUND_RGB[c]) * tissue + grain
        if self.pen:
            # a thick blue stroke along a line near the top of the slide
            slope = 0.05 * self.height / self.width
            line = ys[:, None] - (0.12 * self.height + slope * xs[None, :])
            ink = (np.abs(line) < 0.015 * self.height)[..., None]
            rgb = np.where(ink, np.array([40.0, 60.0, 170.0], dtype=np.float32), rgb)
        return np.clip(rgb, 0, 255).astype(np.uint8)


def synthetic_tissue(height: int, width: int, seed: int = 0, *, pen: bool = False) -> np.ndarray:
    """Whole H&E-like image (uint8 RGB) of ``height`` x ``width`` px."""
    return TissueField(height, width, seed, pen=pen).render(0, 0, height, width)


def downsample2(rgb: np.ndarray) -> np.ndarray:
    """2x2 box downsample (odd trailing row/column dropped)."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    a = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).astype(np.float32).mean((1, 3))
    return np.round(a).astype(np.uint8)


def _pyramid(rgb: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [rgb]
    for _ in range(1, levels):
        if min(out[-1].shape[:2]) < 32:
            break
        out.append(downsample2(out[-1]))
    return out


def _common(jpeg: bool) -> dict:
    # metadata=None: a single ImageDescription tag (tifffile otherwise adds its own JSON one,
    # which hides the Aperio description from OpenSlide).
    return {
        "photometric": "rgb",
        "metadata": None,
        "compression": "jpeg" if jpeg else "zlib",
        "compressionargs": {"level": 90} if jpeg else None,
    }


def _resolution(mpp: float | None, downsample: float, unit: str) -> dict:
    if mpp is None:
        return {}
    per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[unit]
    px_per_unit = per_unit / (mpp * downsample)
    return {"resolution": (px_per_unit, px_per_unit), "resolutionunit": unit}


def write_tiled_tiff(
    path: str | Path,
    rgb_level0: np.ndarray,
    *,
    mpp: float | None,
    levels: int = 3,
    tile: int = 256,
    jpeg: bool = True,
    resolution_unit: str = "CENTIMETER",
    description: str = "",
) -> Path:
    """Generic pyramidal tiled TIFF: level 0 then 2x-reduced levels as further pages.

    ``mpp=None`` writes no resolution tags (a slide with unknown microns per pixel).
    ``resolution_unit`` is "CENTIMETER" or "INCH"."""
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=rgb_level0.nbytes > 2**31) as tw:
        for i, level in enumerate(_pyramid(rgb_level0, levels)):
            tw.write(
                level,
                tile=(tile, tile),
                subfiletype=1 if i else 0,
                description=description if i == 0 and description else None,
                **_resolution(mpp, 2**i, resolution_unit),
                **_common(jpeg),
            )
    return path


def write_ome_tiff(
    path: str | Path,
    rgb_level0: np.ndarray,
    *,
    mpp: float,
    unit: str = "µm",
    levels: int = 3,
    tile: int = 256,
) -> Path:
    """OME-TIFF as Bio-Formats/QuPath export it: level 0 in the main IFD with OME-XML
    (``PhysicalSizeX`` in ``unit``), the reduced levels in its SubIFDs, no resolution tags.
    OpenSlide sees only level 0 of such a file; tiffslide sees the pyramid."""
    path = Path(path)
    pyr = _pyramid(rgb_level0, levels)
    size = {"µm": mpp, "nm": mpp * 1000.0}[unit]
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": size,
        "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": size,
        "PhysicalSizeYUnit": unit,
    }
    jpeg = {"photometric": "rgb", "compression": "jpeg", "tile": (tile, tile)}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(pyr[0], subifds=levels - 1, metadata=meta, **jpeg)
        for level in pyr[1:]:
            tw.write(level, subfiletype=1, **jpeg)
    return path


def write_dicom_wsi(
    folder: str | Path, rgb_level0: np.ndarray, *, mpp: float, levels: int = 3, tile: int = 256
) -> list[Path]:
    """A DICOM VL Whole Slide Microscopy series (one file per level, TILED_FULL JPEG
    baseline frames, PixelSpacing in mm) as scanners export it: the folder is the slide.
    Returns the files, level 0 first. Needs pydicom (a test dependency)."""
    import io

    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    wsi_sop = "1.2.840.10008.5.1.4.1.1.77.1.6"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i, level in enumerate(_pyramid(rgb_level0, levels)):
        h, w = level.shape[:2]
        frames = []
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                frame = np.full((tile, tile, 3), 255, np.uint8)
                part = level[y : y + tile, x : x + tile]
                frame[: part.shape[0], : part.shape[1]] = part
                buf = io.BytesIO()
                Image.fromarray(frame).save(buf, "JPEG", quality=90)
                frames.append(buf.getvalue())
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = wsi_sop
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.Modality, ds.InstanceNumber = frame_of_ref, "SM", i + 1
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
            if i == 0
            else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        )
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
        ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.DimensionOrganizationType = "TILED_FULL"
        measures = Dataset()
        measures.PixelSpacing = [mpp * 2**i / 1000.0] * 2  # mm
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        ds.ImagedVolumeWidth = rgb_level0.shape[1] * mpp / 1000.0
        ds.ImagedVolumeHeight = rgb_level0.shape[0] * mpp / 1000.0
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        path = folder / f"level{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def aperio_description(
    width: int, height: int, *, mpp: float | None, app_mag: float | None, tile: int = 256
) -> str:
    parts = [
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q=90",
    ]
    if app_mag is not None:
        parts.append(f"AppMag = {app_mag:g}")
    parts += ["StripeWidth = 2040", "ScanScope ID = SYNTH", "Filename = synthetic"]
    if mpp is not None:
        parts.append(f"MPP = {mpp:.4f}")
    return "|".join(parts)


def write_svs(
    path: str | Path,
    rgb: np.ndarray,
    *,
    mpp: float | None = 0.25,
    app_mag: float | None = 40,
    levels: int = 3,
    tile: int = 256,
) -> Path:
    """Aperio-style SVS: tiled baseline with the Aperio description, a stripped thumbnail,
    then tiled reduced levels. OpenSlide's ``aperio`` driver and tiffslide both read it."""
    path = Path(path)
    h, w = rgb.shape[:2]
    desc = aperio_description(w, h, mpp=mpp, app_mag=app_mag, tile=tile)
    pyr = _pyramid(rgb, levels)
    thumb = pyr[-1]
    while max(thumb.shape[:2]) > 768:
        thumb = downsample2(thumb)
    with tifffile.TiffWriter(path, bigtiff=rgb.nbytes > 2**31) as tw:
        tw.write(pyr[0], tile=(tile, tile), description=desc, **_common(True))
        tw.write(
            thumb,
            rowsperstrip=16,
            description=desc.replace(" JPEG/RGB", f" -> {thumb.shape[1]}x{thumb.shape[0]} -"),
            **_common(True),
        )
        for level in pyr[1:]:
            tw.write(
                level,
                tile=(tile, tile),
                description=desc.replace(" JPEG/RGB", f" -> {level.shape[1]}x{level.shape[0]}"),
                **_common(True),
            )
    return path


def write_blank_tiff(path: str | Path, height: int = 2048, width: int = 2048, *, mpp=0.5) -> Path:
    """A valid pyramidal slide of empty glass (no tissue)."""
    rgb = np.full((height, width, 3), BACKGROUND_RGB, dtype=np.uint8)
    return write_tiled_tiff(path, rgb, mpp=mpp, levels=3)


def _render_tile(field: TissueField, y: int, x: int, tile: int, ds: float) -> np.ndarray:
    """A tile; tiles of bare glass (tissue score well below 0 on a 17x17 probe grid, which
    is far finer than the tissue blobs) are filled from a cached glass texture."""
    probe = np.linspace(0, tile, 17)
    score = field.tissue_score((y + probe) * ds, (x + probe) * ds)
    if score.max() < -0.05:
        key = (tile, field.seed)
        glass = _GLASS.get(key)
        if glass is None:
            glass = TissueField(8 * tile, 8 * tile, field.seed + 99).render(0, 0, tile, tile)
            glass[:] = np.clip(
                glass.astype(np.int16) - glass.mean((0, 1)).astype(np.int16) + BACKGROUND_RGB,
                0,
                255,
            ).astype(np.uint8)
            _GLASS[key] = glass
        return glass
    return field.render(y, x, tile, tile, ds)


_GLASS: dict[tuple[int, int], np.ndarray] = {}


def _row(args: tuple[TissueField, int, int, float, int]) -> list[np.ndarray]:
    field, y, w, ds, tile = args
    return [_render_tile(field, y, x, tile, ds) for x in range(0, w, tile)]


def _tiles(
    field: TissueField, h: int, w: int, ds: float, tile: int, pool: Any = None
) -> Iterator[np.ndarray]:
    rows = [(field, y, w, ds, tile) for y in range(0, h, tile)]
    if pool is None:
        for args in rows:
            yield from _row(args)
        return
    batch = 2 * pool._processes  # bounded look-ahead keeps memory at a few rows
    for i in range(0, len(rows), batch):
        for row in pool.map(_row, rows[i : i + batch], chunksize=1):
            yield from row


def write_procedural_tiff(
    path: str | Path,
    height: int,
    width: int,
    *,
    mpp: float = 0.25,
    levels: int = 4,
    tile: int = 256,
    seed: int = 0,
    workers: int = 1,
    tissue_bias: float = 0.0,
) -> Path:
    """Large pyramidal JPEG-tiled TIFF rendered tile by tile (memory stays ~ a few rows of
    tiles); ``workers`` processes render rows in parallel. Every level is rendered from the
    procedural field at its own downsample."""
    import multiprocessing as mp

    path = Path(path)
    field = TissueField(height, width, seed, tissue_bias=tissue_bias)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    with contextlib.ExitStack() as stack, tifffile.TiffWriter(path, bigtiff=True) as tw:
        if pool is not None:
            stack.enter_context(pool)
        for i in range(levels):
            ds = 2**i
            h, w = height // ds, width // ds
            if min(h, w) < tile:
                break
            tw.write(
                _tiles(field, h, w, ds, tile, pool),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                subfiletype=1 if i else 0,
                maxworkers=1,
                **_resolution(mpp, ds, "CENTIMETER"),
                **_common(True),
            )
    return path
