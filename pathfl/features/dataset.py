"""Reading tiles for the encoder: one map-style dataset over the tiles of all slides of a run,
so a single ``DataLoader`` with persistent workers serves the whole batch (the next slide is
read while the previous one is still being encoded). Batches never mix slides. Each worker
opens its own slide handles, lazily, and keeps a couple open."""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

# Status codes travelling with each tile.
TILE_OK, TILE_FAILED, SLIDE_FAILED = 0, 1, 2
MAX_OPEN_SLIDES = 2


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

    @property
    def n_tiles(self) -> int:
        return int(self.coords.shape[0])


class TileDataset(Dataset):
    """Item ``i`` of the concatenated tile list → ``(uint8 CHW tensor, job index, tile index,
    status, error)``. A tile that cannot be read comes back as zeros with ``TILE_FAILED``; a
    slide that cannot be opened gives ``SLIDE_FAILED`` for each of its tiles."""

    def __init__(self, jobs: list[SlideJob]) -> None:
        self.jobs = jobs
        self.offsets = np.cumsum([0] + [j.n_tiles for j in jobs]).tolist()
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._broken: dict[int, str] = {}

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

    def close(self) -> None:
        for job_idx in list(self._open):
            self._drop(job_idx)


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


def collate(
    items: list[tuple[torch.Tensor, int, int, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    imgs, jobs, tiles, status, errors = zip(*items, strict=True)
    return (
        torch.stack(imgs),
        torch.tensor(jobs, dtype=torch.int64),
        torch.tensor(tiles, dtype=torch.int64),
        torch.tensor(status, dtype=torch.int64),
        list(errors),
    )
