"""Tile one slide or a batch: tissue mask → grid → coords file + QC thumbnail + GeoJSON,
with a manifest row per slide, resume by fingerprint and a process pool over slides.

Output layout under ``out_dir``::

    coords/<slide_id>.h5        renamed into place last: its presence means "done"
    thumbnails/<slide_id>.png   QC picture (also written when no tissue is found)
    geojson/<slide_id>.geojson  tissue polygons for QuPath
    manifest.csv                one row per slide, rewritten after each slide

A slide's three files are written to temporary files and renamed together at the end, so a
rerun that fails (or is interrupted) leaves the earlier outputs of that slide untouched and
consistent with each other.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pathfl.formats.coords_h5 import (
    COORDS_DIR,
    coords_file_path,
    read_coords,
    read_fingerprint,
    write_coords,
)
from pathfl.interrupts import WorkerPool, checkpoint
from pathfl.io import Manifest, ManifestRow, atomic_path, sha256_json
from pathfl.slide import Slide, SlideError, open_slide
from pathfl.tiling.coords import build_attrs
from pathfl.tiling.grid import grid_coords, plan_read, tissue_fractions
from pathfl.tiling.params import GridParams, TissueParams
from pathfl.tiling.qc import draw_qc, tissue_geojson, write_geojson, write_png
from pathfl.tiling.tissue import Saturation, detect_tissue, overview_saturation, read_overview

logger = logging.getLogger(__name__)

#: bump when the tiling algorithm changes so old outputs are recomputed
TILING_VERSION = 1
OUTPUT_DIRS = (COORDS_DIR, "thumbnails", "geojson")
#: seconds the slides being tiled get to finish after Ctrl-C / SIGTERM before their worker
#: processes are terminated
INTERRUPT_GRACE_S = 2.0


@dataclass(frozen=True)
class SlideJob:
    """One slide to tile: its id (output file stem), path and optional mpp override."""

    slide_id: str
    path: Path
    mpp_override: float | None = None


@dataclass(frozen=True)
class TileConfig:
    grid: GridParams = field(default_factory=GridParams)
    tissue: TissueParams = field(default_factory=TissueParams)
    backend: str = "auto"
    thumbnail_px: int = 1200
    overwrite: bool = False


@dataclass
class SlideResult:
    slide_id: str
    path: str
    status: str  # ok | failed | skipped
    n_tiles: int = 0
    mpp: float | None = None
    seconds: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    def manifest_row(self) -> ManifestRow:
        return ManifestRow(
            slide_id=self.slide_id,
            path=self.path,
            status=self.status,
            n_tiles=self.n_tiles,
            mpp=self.mpp,
            seconds=self.seconds,
            error=self.error,
        )


def quick_file_hash(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Identity of a slide file without reading all of it: size + first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk_bytes))
        if size > chunk_bytes:
            f.seek(max(size - chunk_bytes, chunk_bytes))
            h.update(f.read(chunk_bytes))
    return h.hexdigest()


def fingerprint(job: SlideJob, config: TileConfig) -> str:
    """Hash of the tiling parameters and the slide's identity (not of the backend or the
    QC settings, which do not change the coordinates)."""
    return sha256_json(
        {
            "tiling_version": TILING_VERSION,
            "grid": config.grid.to_dict(),
            "tissue": config.tissue.to_dict(),
            "slide": {"name": job.path.name, "hash": quick_file_hash(job.path)},
            "mpp_override": job.mpp_override,
        }
    )


def output_paths(out_dir: Path, slide_id: str) -> tuple[Path, Path, Path]:
    """A slide's coords file, QC thumbnail and GeoJSON."""
    out_dir = Path(out_dir)
    return (
        coords_file_path(out_dir, slide_id),
        out_dir / "thumbnails" / f"{slide_id}.png",
        out_dir / "geojson" / f"{slide_id}.geojson",
    )


def tile_slide(job: SlideJob, out_dir: str | os.PathLike[str], config: TileConfig) -> SlideResult:
    """Tile one slide; never raises for slide problems (they become a ``failed`` result)."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    result = SlideResult(slide_id=job.slide_id, path=str(job.path), status="failed")
    cpath = coords_file_path(out_dir, job.slide_id)
    try:
        if not job.path.is_file():
            raise SlideError(f"{job.path}: no such file")
        fp = fingerprint(job, config)
        if cpath.exists() and not config.overwrite:
            old = read_fingerprint(cpath)
            if old == fp:
                coords, attrs = read_coords(cpath)
                result.status, result.n_tiles = "skipped", len(coords)
                result.mpp = float(attrs.get("mpp_level0", 0)) or None
                return result
            logger.info("%s: parameters or slide changed, recomputing", job.slide_id)
        _tile(job, out_dir, config, fp, result)
    except SlideError as e:
        result.error = str(e)
    except Exception as e:  # a bad slide must not stop the batch
        logger.debug("%s failed", job.path, exc_info=True)
        result.error = f"{job.path}: {type(e).__name__}: {e}"
    finally:
        result.seconds = time.perf_counter() - t0
    if result.status == "failed":
        if cpath.exists():
            result.error += (
                f"; the earlier outputs of this slide ({cpath} with its thumbnail and GeoJSON, "
                "from an earlier run) are kept unchanged"
            )
        logger.warning("%s", result.error)
    return result


def _overviews(slide: Slide, config: TileConfig) -> tuple[np.ndarray, Saturation]:
    """The QC thumbnail (longer side ``thumbnail_px``) and the saturation of the tissue-mask
    image (at ``tissue.mask_mpp``; the RGB is freed on return); one slide read when the
    thumbnail is fine enough for both."""
    saturation = functools.partial(overview_saturation, remove_pen=config.tissue.remove_pen)
    assert slide.mpp is not None
    w0, h0 = slide.dimensions
    tissue_mpp = max(config.tissue.mask_mpp, slide.mpp)
    thumb_mpp = max(slide.mpp, max(w0, h0) * slide.mpp / config.thumbnail_px)
    thumb = read_overview(slide, thumb_mpp)
    if abs(thumb_mpp - tissue_mpp) / tissue_mpp < 1e-3:
        return thumb, saturation(thumb)
    if thumb_mpp < tissue_mpp:  # the thumbnail is finer: derive the mask image from it
        size = (
            max(1, round(w0 * slide.mpp / tissue_mpp)),
            max(1, round(h0 * slide.mpp / tissue_mpp)),
        )
        return thumb, saturation(cv2.resize(thumb, size, interpolation=cv2.INTER_AREA))
    return thumb, saturation(read_overview(slide, tissue_mpp))


def _tile(job: SlideJob, out_dir: Path, config: TileConfig, fp: str, result: SlideResult) -> None:
    with open_slide(
        job.path, backend=config.backend, mpp_override=job.mpp_override, slide_id=job.slide_id
    ) as slide:
        assert slide.mpp is not None
        result.mpp = slide.mpp
        result.warnings = list(slide.warnings)
        plan = plan_read(slide, config.grid)
        w0, h0 = slide.dimensions
        thumb, saturation = _overviews(slide, config)
        tissue = detect_tissue(slide, config.tissue, saturation=saturation)
        coords = grid_coords(slide, plan)
        frac = tissue_fractions(coords, plan.size_l0, tissue)
        keep = frac >= config.grid.min_tissue_fraction
        keep &= frac > 0
        coords, frac = coords[keep], frac[keep]
        label = f"{job.slide_id}  {len(coords)} tiles @ {config.grid.target_mpp:g} um/px"
        qc = draw_qc(
            thumb,
            level0_size=(w0, h0),
            tissue=tissue,
            coords=coords,
            size_l0=plan.size_l0,
            label=label,
        )
        final_coords, final_png, final_geojson = output_paths(out_dir, job.slide_id)
        if len(coords) == 0:
            what = (
                "no tissue found"
                if not tissue.mask.any()
                else "no tile reaches the minimum tissue fraction"
            )
            if not final_coords.exists():  # never replace the picture of earlier good tiles
                write_png(final_png, qc)
            raise SlideError(
                f"{job.path}: {what} (tissue {100 * tissue.tissue_fraction:.2f}% of the "
                f"slide, saturation threshold {tissue.threshold:.3f}); see the thumbnail, or "
                "adjust the tissue parameters"
            )
        attrs = build_attrs(slide, plan, config.grid, config.tissue, fingerprint=fp)
        # temporary files renamed when the block ends, in reverse order: the coords file last
        with contextlib.ExitStack() as stack:
            tmp_coords, tmp_png, tmp_geojson = (
                stack.enter_context(atomic_path(p))
                for p in (final_coords, final_png, final_geojson)
            )
            write_png(tmp_png, qc)
            write_geojson(tmp_geojson, tissue_geojson(tissue, slide_id=job.slide_id))
            write_coords(tmp_coords, coords, attrs, tissue_fraction=frac)
        result.status, result.n_tiles = "ok", len(coords)


def clean_temp_files(out_dir: Path) -> int:
    """Remove temporary files a killed run left behind (``.<name>.<random>.<ext>.tmp``)."""
    n = 0
    for sub in (out_dir, *(out_dir / d for d in OUTPUT_DIRS)):
        if not sub.is_dir():
            continue
        for p in sub.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    if n:
        logger.info("removed %d temporary file(s) left by an interrupted run", n)
    return n


def _worker_init(log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(name)s: %(message)s")


Worker = Callable[[SlideJob, Path, TileConfig], SlideResult]


def run_batch(
    jobs: Sequence[SlideJob],
    out_dir: str | os.PathLike[str],
    config: TileConfig,
    *,
    workers: int = 1,
    on_result: Callable[[SlideResult], None] | None = None,
    worker: Worker = tile_slide,
    grace_s: float = INTERRUPT_GRACE_S,
) -> list[SlideResult]:
    """Tile every job; the manifest is updated as each slide finishes.

    With ``workers > 1`` slides run in a pool of spawned processes. If a worker process dies
    (a crash inside a native reader), the slides that were in flight are retried one at a
    time, so only the slide that crashes the reader is marked failed. ``worker`` is the
    per-slide function (a module-level function; replaceable for tests).

    Interrupted (``KeyboardInterrupt``, :class:`pathfl.interrupts.Interrupted`), queued slides
    are cancelled, the running ones get ``grace_s`` seconds to finish (their rows are
    written), then the workers are terminated and the exception goes on; slides that did not
    finish get no manifest row."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out_dir)
    manifest = Manifest.load(out_dir / "manifest.csv")
    results: list[SlideResult] = []

    def done(r: SlideResult) -> None:
        manifest.update(r.manifest_row())
        results.append(r)
        if on_result is not None:
            on_result(r)

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            checkpoint()
            done(worker(job, out_dir, config))
        return results
    pending, n_workers = list(jobs), min(workers, len(jobs))
    while pending:
        crashed = _pool_round(pending, out_dir, config, n_workers, worker, done, grace_s=grace_s)
        if not crashed:
            break
        if n_workers == 1:
            # one worker runs jobs in submission order: the first crashed job is the culprit
            culprit = crashed[0]
            done(_failed(culprit, "the worker process crashed while reading this slide"))
            pending, n_workers = crashed[1:], min(workers, max(1, len(crashed) - 1))
        else:
            logger.warning(
                "a worker process died; retrying %d slide(s) one at a time", len(crashed)
            )
            pending, n_workers = crashed, 1
    return results


def _failed(job: SlideJob, reason: str) -> SlideResult:
    return SlideResult(
        slide_id=job.slide_id, path=str(job.path), status="failed", error=f"{job.path}: {reason}"
    )


def _pool_round(
    jobs: list[SlideJob],
    out_dir: Path,
    config: TileConfig,
    n_workers: int,
    worker: Worker,
    done: Callable[[SlideResult], None],
    *,
    grace_s: float,
) -> list[SlideJob]:
    """Run ``jobs`` in one process pool; return the jobs lost to a broken pool (in
    submission order)."""
    level = logging.getLogger().getEffectiveLevel()
    crashed: list[int] = []
    collected: set[cf.Future] = set()

    def collect(fut: cf.Future) -> None:
        collected.add(fut)
        i = futures[fut]
        try:
            done(fut.result())
        except BrokenProcessPool:
            crashed.append(i)
        except Exception as e:  # e.g. a result that cannot be pickled back
            done(_failed(jobs[i], f"worker failed: {type(e).__name__}: {e}"))

    with WorkerPool(n_workers, initializer=_worker_init, initargs=(level,)) as pool:
        futures: dict[cf.Future, int] = {}
        try:
            for i, job in enumerate(jobs):
                futures[pool.submit(worker, job, out_dir, config)] = i
            for fut in cf.as_completed(futures):
                collect(fut)
                checkpoint()
        except BaseException:  # Ctrl-C, SIGTERM: keep what finishes within the grace time
            pool.stop(futures=futures, grace_s=grace_s)
            for fut in futures:
                finished = fut.done() and not fut.cancelled()
                if fut not in collected and finished and fut.exception() is None:
                    collect(fut)
            raise
    return [jobs[i] for i in sorted(crashed)]


def summarize(results: Sequence[SlideResult]) -> dict[str, int]:
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r.status] += 1
    counts["tiles"] = int(np.sum([r.n_tiles for r in results if r.status != "failed"]))
    return counts
