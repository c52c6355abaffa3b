"""Native-tile reader: regions of one level of a tiled (pyramidal) TIFF / Aperio SVS read from
its compressed tiles by byte offset and decoded in batches, without OpenSlide.

What it covers (:func:`open_native_level` says why it does not, naming the file):

* tiled, 8-bit, 3-sample, chunky TIFF pages with orientation 1;
* JPEG (compression 7), with the page's ``JPEGTables`` (abbreviated streams, as in SVS): the
  JPEG colour space follows the TIFF photometric tag as OpenSlide and tifffile read it (RGB
  without a JFIF marker, as Aperio writes "JPEG/RGB", is decoded without the YCbCr
  transform; YCbCr is converted to RGB);
* Aperio JPEG 2000 with RGB components (33005) and plain JPEG 2000 (34712), when imagecodecs
  has its OpenJPEG codec. Aperio's YCbCr JPEG 2000 (33003) is not covered.

Pixels outside the level, and tiles with no data (byte count 0), come back white, as
:class:`~pathfl.slide.openslide_backend.OpenSlideSlide` returns them. Decoding on the CPU uses
imagecodecs (libjpeg-turbo / OpenJPEG); :meth:`NativeLevel.read_regions` with a CUDA device
decodes JPEG tiles with ``torchvision.io.decode_jpeg`` (nvJPEG) and assembles on the GPU."""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "NativeLevel",
    "NativeUnsupportedError",
    "TileLayout",
    "level_positions",
    "open_native_level",
]

JPEG, APERIO_J2K_YCBCR, APERIO_J2K_RGB, JPEG2000 = 7, 33003, 33005, 34712
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6
#: an Adobe APP14 segment saying "no colour transform" (RGB components), for decoders that
#: cannot be told the colour space (torchvision / nvJPEG)
#: decoded tiles kept per open level (the tiles shared by consecutive batches)
CACHE_BYTES = 32 << 20
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class NativeUnsupportedError(Exception):
    """This slide level cannot be read natively (the message says why); use the slide backend."""


@dataclass(frozen=True)
class TileLayout:
    """Where a TIFF page's tiles are and how they are coded."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray  # int64, one per tile, row-major
    counts: np.ndarray  # int64 byte counts (0: no data)
    codec: str  # "jpeg" | "jpeg2000"
    tables: bytes  # JPEGTables ("" if none)
    rgb_jpeg: bool  # JPEG components are RGB (no YCbCr transform)

    @property
    def across(self) -> int:
        return -(-self.width // self.tile_w)


def _jpeg_is_rgb(photometric: int, first_tile: bytes) -> bool:
    """RGB photometric without a JFIF (APP0) marker: components are R, G, B (Aperio)."""
    return photometric == PHOTOMETRIC_RGB and b"\xff\xe0" not in first_tile[:64]


def _codec(page: Any) -> str:
    comp = int(page.compression)
    if comp == JPEG:
        if int(page.photometric) not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
            raise NativeUnsupportedError(f"JPEG with photometric {int(page.photometric)}")
        return "jpeg"
    if comp in (APERIO_J2K_RGB, JPEG2000):
        import imagecodecs

        if not imagecodecs.JPEG2K.available:
            raise NativeUnsupportedError("JPEG 2000 tiles but imagecodecs has no OpenJPEG codec")
        return "jpeg2000"
    if comp == APERIO_J2K_YCBCR:
        raise NativeUnsupportedError("Aperio YCbCr JPEG 2000 (33003) is not covered")
    name = getattr(page.compression, "name", str(comp))
    raise NativeUnsupportedError(f"compression {name} ({comp}) is not JPEG or JPEG 2000")


def page_layout(page: Any, fh: Any) -> TileLayout:
    """The :class:`TileLayout` of a tifffile page, or :class:`NativeUnsupportedError`."""
    if not page.is_tiled or page.tiledepth > 1:
        raise NativeUnsupportedError("the level is not tiled")
    if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1:
        spp, bps = page.samplesperpixel, page.bitspersample
        raise NativeUnsupportedError(f"{spp} samples of {bps} bits (need 3 x 8, interleaved)")
    orientation = page.tags.valueof(274, 1)  # Orientation
    if int(orientation) != 1:
        raise NativeUnsupportedError(f"orientation {int(orientation)}")
    codec = _codec(page)
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    first = next((int(i) for i in np.flatnonzero(counts)), None)
    head = b""
    if first is not None:
        fh.seek(int(offsets[first]))
        head = fh.read(min(64, int(counts[first])))
    return TileLayout(
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_w=int(page.tilewidth),
        tile_h=int(page.tilelength),
        offsets=offsets,
        counts=counts,
        codec=codec,
        tables=bytes(page.jpegtables or b"") if codec == "jpeg" else b"",
        rgb_jpeg=codec == "jpeg" and _jpeg_is_rgb(int(page.photometric), head),
    )


def _candidate_pages(tif: Any) -> list[Any]:
    """Pages of the main IFD chain, then the levels of each series (OME-TIFF SubIFDs)."""
    pages = [p for p in tif.pages if hasattr(p, "imagewidth")]  # no TiffFrames
    for series in tif.series:
        for level in series.levels:
            key = getattr(level, "keyframe", None)
            if key is not None and all(key is not p for p in pages):
                pages.append(key)
    return pages


def find_layout(path: str | Path, level_dim: tuple[int, int]) -> TileLayout:
    """The layout of the tiled page of ``path`` whose size is ``level_dim`` (w, h)."""
    import tifffile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tif = tifffile.TiffFile(str(path))
    except Exception as e:  # tifffile raises many kinds on non-TIFF input
        raise NativeUnsupportedError(f"not a TIFF file tifffile can parse ({e})") from None
    with tif:
        w, h = int(level_dim[0]), int(level_dim[1])
        found = [p for p in _candidate_pages(tif) if (p.imagewidth, p.imagelength) == (w, h)]
        tiled = [p for p in found if getattr(p, "is_tiled", False)]
        if not tiled:
            raise NativeUnsupportedError(f"no tiled TIFF page of {w}x{h} px")
        return page_layout(tiled[0], tif.filehandle)


def level_positions(coords: np.ndarray, downsample: tuple[float, float]) -> np.ndarray:
    """Level-0 top-left corners ``coords`` (N, 2) → level px, as OpenSlide maps them
    (``x / downsample``). Raises :class:`NativeUnsupportedError` when a corner falls between
    level pixels (OpenSlide then interpolates, which a tile copy cannot reproduce)."""
    ds = np.asarray(downsample, dtype=np.float64).reshape(1, 2)
    pos = np.asarray(coords, dtype=np.float64).reshape(-1, 2) / ds
    rounded = np.round(pos)
    if pos.size and float(np.abs(pos - rounded).max()) > 1e-6:
        raise NativeUnsupportedError(
            f"tile corners fall between pixels of the level (downsample {ds[0, 0]:g}); "
            "OpenSlide interpolates those"
        )
    return rounded.astype(np.int64)


def open_native_level(path: str | Path, level_dim: tuple[int, int]) -> NativeLevel:
    """A :class:`NativeLevel` for the level of ``path`` that is ``level_dim`` (w, h) px.

    Raises:
        NativeUnsupportedError: the file or level is not covered (the message says why).
    """
    return NativeLevel(path, find_layout(path, level_dim))


class NativeLevel:
    """Reads regions of one level from its compressed tiles (one file descriptor, pread)."""

    def __init__(self, path: str | Path, layout: TileLayout) -> None:
        self.path = Path(path)
        self.layout = layout
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._cached_bytes = 0

    # --- compressed tiles -----------------------------------------------------------------
    def raw(self, index: int) -> bytes:
        """The stored bytes of tile ``index`` (b"" when it has none)."""
        n = int(self.layout.counts[index])
        if n == 0 or self._fd is None:
            return b""
        data = os.pread(self._fd, n, int(self.layout.offsets[index]))
        if len(data) != n:
            raise OSError(f"{self.path}: tile {index} truncated ({len(data)} of {n} bytes)")
        return data

    def complete_jpeg(self, raw: bytes) -> bytes:
        """A stand-alone JPEG stream: the page's tables spliced in after SOI (abbreviated
        streams), and an Adobe marker when the components are RGB."""
        lay = self.layout
        body = raw[2:]
        head = lay.tables[:-2] if lay.tables else b"\xff\xd8"  # tables: SOI ... EOI
        return head + (ADOBE_RGB if lay.rgb_jpeg else b"") + body

    def decode(self, index: int) -> np.ndarray | None:
        """Tile ``index`` as uint8 (tile_h, tile_w, 3) on the CPU; None when it has no data."""
        import imagecodecs

        raw = self.raw(index)
        if not raw:
            return None
        lay = self.layout
        if lay.codec == "jpeg":
            return imagecodecs.jpeg8_decode(
                raw,
                tables=lay.tables or None,
                colorspace=PHOTOMETRIC_RGB if lay.rgb_jpeg else None,
                outcolorspace=PHOTOMETRIC_RGB,
            )
        arr = imagecodecs.jpeg2k_decode(raw)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise NativeUnsupportedError(f"JPEG 2000 tile {index} has shape {arr.shape}")
        return arr

    def _cached_decode(self, index: int) -> np.ndarray | None:
        """:meth:`decode` through a small LRU cache (:data:`CACHE_BYTES`, like OpenSlide's
        per-handle cache): consecutive batches share the stored tiles on their borders."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        tile = self.decode(index)
        self._cache[index] = tile
        self._cached_bytes += 0 if tile is None else tile.nbytes
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= 0 if old is None else old.nbytes
        return tile

    def decode_many(self, indices: Iterable[int], device: Any = None) -> dict[int, Any]:
        """Decoded tiles by index: numpy on the CPU, or HWC uint8 tensors decoded on a CUDA
        ``device`` by nvJPEG in one batch (JPEG only; other codecs decode on the CPU)."""
        indices = list(indices)
        if device is None or getattr(device, "type", str(device)) == "cpu":
            return {i: self._cached_decode(i) for i in indices}
        if self.layout.codec != "jpeg":
            import torch

            cpu = self.decode_many(indices)
            return {
                i: None if a is None else torch.from_numpy(a).to(device) for i, a in cpu.items()
            }
        return self._decode_cuda(indices, device)

    def _decode_cuda(self, indices: list[int], device: Any) -> dict[int, Any]:  # pragma: no cover
        import torch
        from torchvision.io import decode_jpeg

        out: dict[int, Any] = {}
        streams, keys = [], []
        for i in indices:
            raw = self.raw(i)
            if not raw:
                out[i] = None
                continue
            streams.append(torch.frombuffer(bytearray(self.complete_jpeg(raw)), dtype=torch.uint8))
            keys.append(i)
        if streams:
            for i, chw in zip(keys, decode_jpeg(streams, device=device), strict=True):
                out[i] = chw.permute(1, 2, 0)
        return out

    # --- regions --------------------------------------------------------------------------
    def tiles_for(self, xy: tuple[int, int], size: tuple[int, int]) -> list[int]:
        """Indices of the tiles a region of ``size`` (w, h) at level px ``xy`` overlaps."""
        lay = self.layout
        x0, y0 = max(int(xy[0]), 0), max(int(xy[1]), 0)
        x1, y1 = min(int(xy[0]) + size[0], lay.width), min(int(xy[1]) + size[1], lay.height)
        if x1 <= x0 or y1 <= y0:
            return []
        cols = range(x0 // lay.tile_w, (x1 - 1) // lay.tile_w + 1)
        return [
            r * lay.across + c
            for r in range(y0 // lay.tile_h, (y1 - 1) // lay.tile_h + 1)
            for c in cols
        ]

    def paste(self, out: Any, xy: tuple[int, int], size: tuple[int, int], tiles: dict) -> None:
        """Copy the decoded ``tiles`` a region covers into ``out`` (h, w, 3), which is
        white already; works for numpy arrays and torch tensors alike."""
        lay = self.layout
        x, y = int(xy[0]), int(xy[1])
        for index in self.tiles_for(xy, size):
            tile = tiles[index]
            if tile is None:
                continue
            tx, ty = (index % lay.across) * lay.tile_w, (index // lay.across) * lay.tile_h
            # the part of this tile inside the region and inside the level (and decoded)
            ix0, iy0 = max(x, tx), max(y, ty)
            ix1 = min(x + size[0], tx + lay.tile_w, lay.width, tx + tile.shape[1])
            iy1 = min(y + size[1], ty + lay.tile_h, lay.height, ty + tile.shape[0])
            if ix1 > ix0 and iy1 > iy0:
                out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = tile[
                    iy0 - ty : iy1 - ty, ix0 - tx : ix1 - tx
                ]

    def read_regions(self, xys: np.ndarray, size: tuple[int, int], device: Any = None) -> Any:
        """Regions of ``size`` (w, h) whose top-left corners are the level px ``xys`` (B, 2):
        uint8 (B, h, w, 3), numpy on the CPU or a tensor on a CUDA ``device``. Each tile is
        decoded once per call, however many regions share it."""
        xys = np.asarray(xys, dtype=np.int64).reshape(-1, 2)
        w, h = int(size[0]), int(size[1])
        needed = sorted({i for xy in xys for i in self.tiles_for(tuple(xy), (w, h))})
        tiles = self.decode_many(needed, device)
        if device is None or getattr(device, "type", str(device)) == "cpu":
            out: Any = np.full((len(xys), h, w, 3), 255, dtype=np.uint8)
        else:
            import torch

            out = torch.full((len(xys), h, w, 3), 255, dtype=torch.uint8, device=device)
        for b, xy in enumerate(xys):
            self.paste(out[b], (int(xy[0]), int(xy[1])), (w, h), tiles)
        return out

    def close(self) -> None:
        if getattr(self, "_cache", None):
            self._cache.clear()
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NativeLevel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
