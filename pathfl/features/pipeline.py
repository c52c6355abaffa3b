"""``pathfl extract``: coords files → features files, for a batch of slides.

One ``DataLoader`` (workers decode tiles, each with its own slide handles) feeds one encoder;
features stream into a temporary HDF5 per slide that is renamed when the slide is complete.
A tile that cannot be decoded is skipped and counted; a slide that fails is recorded in the
manifest and the batch goes on."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pathfl import __version__
from pathfl.config import ConfigError
from pathfl.features.dataset import (
    SLIDE_FAILED,
    TILE_OK,
    SlideBatchSampler,
    SlideJob,
    TileDataset,
    collate,
    worker_init,
)
from pathfl.features.encoders import Encoder, EncoderSpec, create_encoder
from pathfl.features.h5 import FEATURE_DTYPES, FeaturesWriter
from pathfl.features.inference import InferenceRunner, PendingFeatures
from pathfl.features.plan import Plan, make_plan
from pathfl.interrupts import signals_blocked
from pathfl.io import Manifest, ManifestRow, remove_stale_temps

logger = logging.getLogger(__name__)

INTERPOLATION = "bilinear"
#: tiles more than this factor smaller or larger than the encoder's native input draw a warning
TILE_SIZE_FACTOR = 2.0


@dataclass
class ExtractOptions:
    encoder: str = "mobilenet-v2"
    weights: Path | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    device: str = "cpu"
    precision: str = "fp32"
    dtype: str = "float32"  # storage dtype of the features dataset (float16 halves the files)
    workers: int = 2
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    slide_dir: Path | None = None
    threads: int | None = None  # intra-op threads of the encoder; None = torch's default

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("--threads must be >= 1")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0")
        if self.dtype not in FEATURE_DTYPES:
            raise ConfigError(
                f"--dtype must be one of {', '.join(FEATURE_DTYPES)}, got {self.dtype!r}"
            )


@dataclass
class ExtractCallbacks:
    """Optional hooks for a progress display (the library itself never prints)."""

    on_start: Callable[[Plan], None] | None = None
    on_tiles: Callable[[str, int], None] | None = None
    on_slide: Callable[[ManifestRow], None] | None = None


def transform_for(spec: EncoderSpec) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]:
    """Pixel transform for a slide: tiles are resized to the coords file's ``tile_size`` (or to
    the encoder's fixed input size), then normalised with the encoder's mean/std."""

    def fn(attrs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        out_px = spec.input_px if spec.fixed_input_px else int(attrs["tile_size"])
        return out_px, {
            "resize": out_px,
            "interpolation": INTERPOLATION,
            "mean": list(spec.mean),
            "std": list(spec.std),
        }

    return fn


def tile_size_note(spec: EncoderSpec, tile_px: Any) -> str:
    """A warning when ``tile_px`` is far (over :data:`TILE_SIZE_FACTOR` either way) from the
    encoder's native input size (``input_px`` of its registry entry); "" otherwise."""
    try:
        tile_px = int(tile_px)
    except (TypeError, ValueError):
        return ""
    native = int(spec.input_px or 0)
    if native <= 0 or tile_px <= 0 or 1 / TILE_SIZE_FACTOR <= tile_px / native <= TILE_SIZE_FACTOR:
        return ""
    how = f"resized to {native} px for" if spec.fixed_input_px else "fed as they are to"
    return (
        f"warning: {tile_px}-px tiles {how} encoder {spec.name}, whose native input is "
        f"{native} px: features may be poor (re-tile with --tile-size {native} or use an "
        "encoder made for this size)"
    )


def _warn_tile_sizes(jobs: list[SlideJob], spec: EncoderSpec) -> None:
    by_note: dict[str, int] = {}
    for job in jobs:
        note = tile_size_note(spec, job.attrs.get("tile_size"))
        if note:
            by_note[note] = by_note.get(note, 0) + 1
    for note, n in by_note.items():
        logger.warning("%d slide(s): %s", n, note)


def manifest_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    """``OUT/features/manifest.csv``; a shard writes its own so parallel jobs never race."""
    name = "manifest.csv" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}.csv"
    return out_dir / "features" / name


def make_loader(dataset: TileDataset, *, batch_size: int, workers: int, pin: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=SlideBatchSampler(dataset.offsets, batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        worker_init_fn=functools.partial(worker_init, parent_pid=os.getpid()),
        prefetch_factor=4 if workers > 0 else None,
    )


class _SlideRun:
    """State of the slide whose batches are arriving."""

    def __init__(self, job: SlideJob, spec: EncoderSpec, dtype: str = "float32") -> None:
        self.job = job
        self.t0 = time.perf_counter()
        self.writer = FeaturesWriter(
            job.out_path, feature_dim=spec.feature_dim, n_max=max(1, job.n_tiles), dtype=dtype
        )
        self.error = ""
        self.failed = False
        self.first_tile_error = ""

    def fail(self, message: str) -> None:
        self.writer.abort()
        self.failed, self.error = True, message

    def row(self, status: str, n_tiles: int, error: str) -> ManifestRow:
        mpp = self.job.attrs.get("target_mpp")
        return ManifestRow(
            self.job.slide_id,
            os.fspath(self.job.out_path),
            status,
            n_tiles=n_tiles,
            mpp=float(mpp) if mpp not in (None, "") else None,
            seconds=time.perf_counter() - self.t0,
            error=error,
        )


def _feature_attrs(
    run: _SlideRun, encoder: Encoder, runner: InferenceRunner, n_failed: int
) -> dict[str, Any]:
    job = run.job
    return {
        **job.attrs,
        "encoder": encoder.spec.name,
        "weights_sha256": encoder.weights_sha256,
        "feature_dim": encoder.spec.feature_dim,
        "precision": runner.precision,
        "n_tiles": run.writer.n_rows,
        "n_tiles_coords": job.n_tiles,
        "n_tiles_failed": n_failed,
        "extract_pathfl_version": __version__,
    }


def _finish(
    run: _SlideRun, encoder: Encoder, runner: InferenceRunner, manifest: Manifest
) -> ManifestRow:
    if run.failed:
        row = run.row("failed", 0, run.error)
    else:
        n_failed = run.writer.n_failed
        if run.job.n_tiles > 0 and run.writer.n_rows == 0:
            run.writer.abort()
            error = f"no tile could be read; first error: {run.first_tile_error}"
            row = run.row("failed", 0, error)
        else:
            run.writer.commit(_feature_attrs(run, encoder, runner, n_failed))
            skipped = f"{n_failed} unreadable tile(s) skipped: {run.first_tile_error}"
            notes = [
                skipped if n_failed else "",
                tile_size_note(encoder.spec, run.job.attrs.get("tile_size")),
            ]
            row = run.row("ok", run.writer.n_rows, "; ".join(n for n in notes if n))
    manifest.update(row)
    return row


def run_jobs(
    jobs: list[SlideJob],
    encoder: Encoder,
    runner: InferenceRunner,
    manifest: Manifest,
    *,
    batch_size: int,
    workers: int,
    dtype: str = "float32",
    callbacks: ExtractCallbacks | None = None,
) -> list[ManifestRow]:
    """Encode every job; returns one manifest row per job (also written to ``manifest``)."""
    cb = callbacks or ExtractCallbacks()
    rows: list[ManifestRow] = []

    def finish(run: _SlideRun) -> None:
        row = _finish(run, encoder, runner, manifest)
        rows.append(row)
        if cb.on_slide:
            cb.on_slide(row)

    for job in (j for j in jobs if j.n_tiles == 0):  # nothing to read: an empty, valid file
        finish(_SlideRun(job, encoder.spec, dtype))
    jobs = [j for j in jobs if j.n_tiles > 0]
    if not jobs:
        return rows
    dataset = TileDataset(jobs)
    loader = make_loader(
        dataset, batch_size=batch_size, workers=workers, pin=runner.device.type == "cuda"
    )
    run: _SlideRun | None = None
    pending: tuple[_SlideRun, PendingFeatures, np.ndarray] | None = None
    with signals_blocked():  # the workers start here; they unblock after ignoring SIGINT
        batches = iter(loader)

    def drain() -> None:
        nonlocal pending
        if pending is not None:
            prun, feats, coords = pending
            pending = None
            if not prun.failed:
                try:
                    prun.writer.append(feats.numpy(), coords)
                except OverflowError as e:  # float16 storage of out-of-range features
                    prun.fail(str(e))

    try:
        for imgs, job_idx, tile_idx, status, errors in batches:
            j = int(job_idx[0])
            if run is None or run.job is not jobs[j]:
                drain()
                if run is not None:
                    finish(run)
                run = _SlideRun(jobs[j], encoder.spec, dtype)
            if cb.on_tiles:
                cb.on_tiles(run.job.slide_id, len(tile_idx))
            if run.failed:
                continue
            if bool((status == SLIDE_FAILED).any()):
                drain()
                run.fail(errors[int((status == SLIDE_FAILED).nonzero()[0, 0])])
                continue
            ok = status == TILE_OK
            if not bool(ok.all()):
                bad = (~ok).nonzero().flatten().tolist()
                run.writer.add_failed(run.job.coords[tile_idx[bad].numpy()])
                run.first_tile_error = run.first_tile_error or errors[bad[0]]
            if bool(ok.any()):
                sel = tile_idx[ok].numpy()
                batch = imgs[ok] if not bool(ok.all()) else imgs
                submitted = runner.submit(batch)
                drain()
                pending = (run, submitted, run.job.coords[sel])
        drain()
        if run is not None:
            finish(run)
            run = None
    finally:
        if run is not None:  # interrupted or crashed mid-slide: leave no partial file
            run.writer.abort()
        _stop_loader(batches)
        dataset.close()
    return rows


def _stop_loader(batches: Iterator[Any]) -> None:
    """Stop the loader's worker processes now (on Ctrl-C too), not when the iterator happens
    to be garbage-collected; ``_shutdown_workers`` is idempotent (torch calls it again later)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def extract(
    tiles_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    options: ExtractOptions | None = None,
    callbacks: ExtractCallbacks | None = None,
) -> list[ManifestRow]:
    """Extract features for every coords file under ``tiles_dir`` (this shard's share) into
    ``out_dir/features/``. Returns one manifest row per slide (ok, skipped or failed)."""
    opts = options or ExtractOptions()
    opts.check()
    tiles_dir, out_dir = Path(tiles_dir), Path(out_dir)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    encoder = create_encoder(opts.encoder, weights=opts.weights, options=opts.encoder_options)
    runner = InferenceRunner(encoder, device=opts.device, precision=opts.precision)
    plan = make_plan(
        tiles_dir,
        out_dir,
        encoder_name=encoder.spec.name,
        weights_sha256=encoder.weights_sha256,
        transform_for=transform_for(encoder.spec),
        precision=runner.precision,
        dtype=opts.dtype,
        shard=opts.shard,
        overwrite=opts.overwrite,
        slide_dir=opts.slide_dir,
    )
    (out_dir / "features").mkdir(parents=True, exist_ok=True)
    # what a killed run left half-written: this shard's manifest and slides only (other
    # shards may be writing theirs into the same folder)
    remove_stale_temps(
        manifest_path(out_dir, opts.shard),
        *(Path(row.path) for row in plan.done),
        *(job.out_path for job in plan.jobs),
    )
    manifest = Manifest.load(manifest_path(out_dir, opts.shard))
    for row in plan.done:
        manifest.update(row)
        if callbacks and callbacks.on_slide:
            callbacks.on_slide(row)
    _warn_tile_sizes(plan.jobs, encoder.spec)
    if callbacks and callbacks.on_start:
        callbacks.on_start(plan)
    logger.info(
        "%d slide(s) to encode (%d tiles), %d already done or failed",
        len(plan.jobs),
        plan.n_tiles,
        len(plan.done),
    )
    rows = run_jobs(
        plan.jobs,
        encoder,
        runner,
        manifest,
        batch_size=opts.batch_size,
        workers=opts.workers,
        dtype=opts.dtype,
        callbacks=callbacks,
    )
    return plan.done + rows


def default_workers() -> int:
    """Loader workers: all cores but one for decoding (at most 8), at least one."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))
