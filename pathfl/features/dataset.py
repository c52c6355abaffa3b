"""Reading tiles for the encoder: one map-style dataset over the tiles of all slides of a run,
so a single ``DataLoader`` with persistent workers serves the whole batch (the next slide is
read while the previous one is still being encoded). Batches never mix slides. Each worker
opens its own slide handles, lazily, and keeps a couple open.

A slide the native-tile reader covers (:func:`native_support`,
:mod:`pathfl.slide.native_tiles`) is read a whole batch at a time from its compressed tiles
(``__getitems__``: each stored tile decoded once per batch); any other slide, tile by tile
through its slide backend (OpenSlide, or tiffslide)."""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.nn.functional import interpolate
from torch.utils.data import Dataset, Sampler

from pathfl.slide.native_tiles import (
    NativeLevel,
    NativeUnsupportedError,
    level_positions,
    open_native_level,
)

logger = logging.getLogger(__name__)

# Status codes travelling with each tile.
TILE_OK, TILE_FAILED, SLIDE_FAILED = 0, 1, 2
MAX_OPEN_SLIDES = 2
#: vendors whose levels are plain tile grids (others, e.g. Ventana BIF with overlapping
#: tiles or Leica SCN regions, OpenSlide assembles itself)
NATIVE_VENDORS = ("aperio", "generic-tiff", "generic", "")


@dataclass(frozen=True)
class SlideJob:
    """One slide to encode: where to read it and how (from its coords file)."""

    slide_id: str
    slide_path: Path
    coords_path: Path
    out_path: Path
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    attrs: dict[str, Any]  # the coords file's attrs
    patch_level: int
    read_size: int
    out_px: int  # size handed to the encoder
    backend: str = "auto"
    mpp_override: float | None = None
    native: bool = False  # read with the native-tile reader (:func:`native_support`)

    @property
    def n_tiles(self) -> int:
        return int(self.coords.shape[0])


class TileDataset(Dataset):
    """Item ``i`` of the concatenated tile list → ``(uint8 CHW tensor, job index, tile index,
    status, error)``. A tile that cannot be read comes back as zeros with ``TILE_FAILED``; a
    slide that cannot be opened gives ``SLIDE_FAILED`` for each of its tiles."""

    def __init__(self, jobs: list[SlideJob], *, resize_in_worker: bool = True) -> None:
        self.jobs = jobs
        self.offsets = np.cumsum([0] + [j.n_tiles for j in jobs]).tolist()
        self.resize_in_worker = resize_in_worker  # False: native batches come at read_size
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._broken: dict[int, str] = {}
        self._native: dict[int, NativeLevel | None] = {}  # None: fell back to the backend

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        job = bisect.bisect_right(self.offsets, index) - 1
        return job, index - self.offsets[job]

    def _slide(self, job_idx: int) -> Any:
        if job_idx in self._open:
            self._open.move_to_end(job_idx)
            return self._open[job_idx]
        from pathfl.slide import open_slide

        job = self.jobs[job_idx]
        slide = open_slide(
            job.slide_path,
            backend=job.backend,
            mpp_override=job.mpp_override,
            slide_id=job.slide_id,
        )
        self._open[job_idx] = slide
        while len(self._open) > MAX_OPEN_SLIDES:
            _, old = self._open.popitem(last=False)
            old.close()
        return slide

    def _drop(self, job_idx: int) -> None:
        slide = self._open.pop(job_idx, None)
        if slide is not None:
            try:
                slide.close()
            except Exception:  # a handle in an error state may refuse to close cleanly
                logger.debug("closing %s failed", self.jobs[job_idx].slide_path, exc_info=True)

    def read_tile(self, job: SlideJob, slide: Any, l0_xy: tuple[int, int]) -> np.ndarray:
        img = slide.read_region(l0_xy, job.patch_level, (job.read_size, job.read_size))
        if img.mode != "RGB":
            img = img.convert("RGB")
        if job.read_size != job.out_px:
            img = img.resize((job.out_px, job.out_px), Image.Resampling.BILINEAR)
        return np.array(img, dtype=np.uint8)  # a writable copy (torch refuses read-only arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int, str]:
        job_idx, tile_idx = self.locate(index)
        job = self.jobs[job_idx]
        blank = torch.zeros((3, job.out_px, job.out_px), dtype=torch.uint8)
        if job_idx in self._broken:
            return blank, job_idx, tile_idx, SLIDE_FAILED, self._broken[job_idx]
        try:
            slide = self._slide(job_idx)
        except Exception as e:
            msg = f"{job.slide_path}: cannot open slide: {e}"
            self._broken[job_idx] = msg
            return blank, job_idx, tile_idx, SLIDE_FAILED, msg
        x, y = (int(v) for v in job.coords[tile_idx])
        try:
            arr = self.read_tile(job, slide, (x, y))
        except Exception as e:
            # Some readers (OpenSlide) stay in an error state after a decode error: reopen.
            self._drop(job_idx)
            msg = f"tile ({x}, {y}): {type(e).__name__}: {e}"
            logger.warning("%s: unreadable %s", job.slide_id, msg)
            return blank, job_idx, tile_idx, TILE_FAILED, msg
        return torch.from_numpy(arr).permute(2, 0, 1), job_idx, tile_idx, TILE_OK, ""

    def __getitems__(self, indices: list[int]) -> TileBatch | list[tuple]:
        """A whole batch (one slide): read natively when the slide qualifies, else per tile."""
        job_idx, first = self.locate(indices[0])
        if self.jobs[job_idx].native and self._native_level(job_idx) is not None:
            tile_ids = np.arange(first, first + len(indices))
            if indices == list(range(indices[0], indices[0] + len(indices))):
                try:
                    return self.native_batch(job_idx, tile_ids)
                except Exception as e:  # a corrupt tile: this batch tile by tile, with errors
                    logger.warning(
                        "%s: native read failed (%s: %s); batch read by the slide backend",
                        self.jobs[job_idx].slide_id,
                        type(e).__name__,
                        e,
                    )
        return [self[i] for i in indices]

    def _native_level(self, job_idx: int) -> NativeLevel | None:
        if job_idx not in self._native:
            job = self.jobs[job_idx]
            try:
                level_dim, _ = native_geometry(job.attrs)
                self._native[job_idx] = open_native_level(job.slide_path, level_dim)
            except (NativeUnsupportedError, OSError, ValueError) as e:
                logger.warning("%s: native reader unavailable (%s)", job.slide_id, e)
                self._native[job_idx] = None
        return self._native[job_idx]

    def native_batch(self, job_idx: int, tile_ids: np.ndarray) -> TileBatch:
        """Tiles ``tile_ids`` of one slide from its compressed tiles, as one batch."""
        job = self.jobs[job_idx]
        level = self._native_level(job_idx)
        assert level is not None
        pos = level_positions(job.coords[tile_ids], native_geometry(job.attrs)[1])
        arr = level.read_regions(pos, (job.read_size, job.read_size))
        imgs = torch.from_numpy(arr).permute(0, 3, 1, 2)  # channels-last memory, as the encoder
        if self.resize_in_worker:
            imgs = resize_batch(imgs, job.out_px)
        n = len(tile_ids)
        return TileBatch(
            imgs,
            torch.full((n,), job_idx, dtype=torch.int64),
            torch.from_numpy(tile_ids.astype(np.int64)),
            torch.full((n,), TILE_OK, dtype=torch.int64),
            [""] * n,
        )

    def close(self) -> None:
        for job_idx in list(self._open):
            self._drop(job_idx)
        for level in self._native.values():
            if level is not None:
                level.close()
        self._native.clear()


class SlideBatchSampler(Sampler[list[int]]):
    """Consecutive tiles of one slide per batch, slides in order; never mixes slides."""

    def __init__(self, offsets: list[int], batch_size: int) -> None:
        self.offsets = offsets
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(
            -(-(stop - start) // self.batch_size)
            for start, stop in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        )


def worker_init(_worker_id: int, parent_pid: int | None = None) -> None:
    """Each loader worker decodes with one thread (the main process owns the cores for the
    encoder); slide handles are opened lazily inside the worker, never inherited. Nothing here
    touches thread pools the parent may have used before forking (e.g. OpenCV's, which can
    deadlock a forked child). The worker ignores Ctrl-C (the main process stops it) and dies
    with the main process (:func:`pathfl.interrupts.worker_setup`)."""
    from pathfl.interrupts import worker_setup

    worker_setup(parent_pid)
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        ds = info.dataset
        if isinstance(ds, TileDataset):
            ds._open.clear()  # never use a handle forked from the parent
            ds._broken.clear()
            ds._native.clear()


class TileBatch(NamedTuple):
    """A batch as the loader yields it: uint8 (B, 3, H, W) images, job index, tile index and
    status per tile, error messages ("" when read)."""

    imgs: torch.Tensor
    jobs: torch.Tensor
    tiles: torch.Tensor
    status: torch.Tensor
    errors: list[str]


def collate(
    items: TileBatch | list[tuple[torch.Tensor, int, int, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    if isinstance(items, TileBatch):  # read as one batch already (native reader)
        return tuple(items)  # type: ignore[return-value]
    imgs, jobs, tiles, status, errors = zip(*items, strict=True)
    return (
        torch.stack(imgs),
        torch.tensor(jobs, dtype=torch.int64),
        torch.tensor(tiles, dtype=torch.int64),
        torch.tensor(status, dtype=torch.int64),
        list(errors),
    )


def resize_batch(imgs: torch.Tensor, out_px: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) → (B, 3, out_px, out_px), bilinear with antialiasing (PIL's
    BILINEAR within one grey level), on the tensor's device; a no-op at that size. On the
    CPU torch resizes channels-last uint8 directly (its vectorised path, ~6x PIL here)."""
    if imgs.shape[-1] == out_px and imgs.shape[-2] == out_px:
        return imgs
    size = (out_px, out_px)
    if imgs.device.type == "cpu":
        x = imgs.contiguous(memory_format=torch.channels_last)
        return interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    x = interpolate(imgs.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def native_geometry(attrs: dict[str, Any]) -> tuple[tuple[int, int], tuple[float, float]]:
    """``(level_dim, downsample)`` of a coords file's patch level, checked against its
    level-0 size; ValueError (why) when missing or inconsistent."""
    try:
        w, h = (int(v) for v in attrs["level_dim"])
        dx, dy = (float(v) for v in attrs["downsample"])
        w0, h0 = int(attrs["level0_width"]), int(attrs["level0_height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the coords file has no level_dim / downsample / level-0 size") from None
    if abs(w0 / dx - w) > 1 + 1e-3 * w or abs(h0 / dy - h) > 1 + 1e-3 * h:
        raise ValueError(f"its level_dim {w}x{h} is not level 0 / downsample {dx:g}")
    return (w, h), (dx, dy)


def native_support(slide_path: Path, attrs: dict[str, Any], coords: np.ndarray) -> str:
    """ "" when the native-tile reader covers this slide's tiles (a plain tiled JPEG / JPEG
    2000 TIFF level, tile corners on level pixels), else why not (one sentence)."""
    vendor = str(attrs.get("vendor", "") or "")
    if vendor not in NATIVE_VENDORS:
        return f"{vendor} slides are assembled by OpenSlide itself"
    try:
        level_dim, downsample = native_geometry(attrs)
        level_positions(coords, downsample)
        with open_native_level(slide_path, level_dim):
            pass
    except (ValueError, NativeUnsupportedError) as e:
        return str(e)
    except OSError as e:
        return f"cannot open it ({e})"
    return ""
