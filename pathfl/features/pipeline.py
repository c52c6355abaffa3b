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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pathfl import __version__
from pathfl.features.dataset import (
    SLIDE_FAILED,
    TILE_OK,
    SlideBatchSampler,
    SlideJob,
    TileDataset,
    collate,
    resize_batch,
    worker_init,
)
from pathfl.features.encoders import Encoder, EncoderSpec, create_encoder
from pathfl.features.inference import InferenceRunner, PendingFeatures
from pathfl.features.malloc import tune_malloc
from pathfl.features.options import ExtractOptions
from pathfl.features.plan import Plan, make_plan
from pathfl.features.stain_ref import AugmentSpec, StainTransform, make_stain_transform
from pathfl.features.transform import (
    check_resolution,
    tile_size_note,
    transform_for,
    warn_tile_sizes,
)
from pathfl.formats.features_h5 import FeaturesWriter
from pathfl.interrupts import checkpoint, signals_blocked
from pathfl.io import Manifest, ManifestRow, remove_stale_temps

logger = logging.getLogger(__name__)


@dataclass
class ExtractCallbacks:
    """Optional hooks for a progress display (the library itself never prints)."""

    on_start: Callable[[Plan], None] | None = None
    on_tiles: Callable[[str, int], None] | None = None
    on_slide: Callable[[ManifestRow], None] | None = None


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

    def __init__(
        self, job: SlideJob, spec: EncoderSpec, dtype: str = "float32", n_aug: int = 0
    ) -> None:
        self.job = job
        self.t0 = time.perf_counter()
        self.writer = FeaturesWriter(
            job.out_path,
            feature_dim=spec.feature_dim,
            n_max=max(1, job.n_tiles),
            dtype=dtype,
            n_aug=n_aug,
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
    run: _SlideRun, encoder: Encoder, runner: InferenceRunner, n_failed: int, stain: StainTransform
) -> dict[str, Any]:
    job = run.job
    return {
        "stain_norm": stain.method,
        "stain_ref_sha256": stain.ref.sha256 if stain.ref is not None else "",
        "stain_augment_k": stain.augment.k,
        **job.attrs,
        "encoder": encoder.spec.name,
        "weights_sha256": encoder.weights_sha256,
        **({"encoder_config_sha256": encoder.config_sha256} if encoder.config_sha256 else {}),
        "feature_dim": encoder.spec.feature_dim,
        "precision": runner.precision,
        "n_tiles": run.writer.n_rows,
        "n_tiles_coords": job.n_tiles,
        "n_tiles_failed": n_failed,
        "extract_pathfl_version": __version__,
        "tile_reader": "native" if job.native else job.backend,  # informative, not compared
    }


def _finish(
    run: _SlideRun,
    encoder: Encoder,
    runner: InferenceRunner,
    manifest: Manifest,
    stain: StainTransform,
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
            run.writer.commit(_feature_attrs(run, encoder, runner, n_failed, stain))
            skipped = f"{n_failed} unreadable tile(s) skipped: {run.first_tile_error}"
            notes = [
                skipped if n_failed else "",
                tile_size_note(encoder.spec, run.job.attrs.get("tile_size")),
            ]
            row = run.row("ok", run.writer.n_rows, "; ".join(n for n in notes if n))
    manifest.update(row)
    return row


class _Extraction:
    """One pass over the loader's batches: the slide whose rows are being written, and the
    batch whose features are still being computed (submitted, not yet written)."""

    def __init__(
        self,
        encoder: Encoder,
        runner: InferenceRunner,
        manifest: Manifest,
        *,
        dtype: str,
        callbacks: ExtractCallbacks,
        stain: StainTransform,
    ) -> None:
        self.encoder, self.runner, self.manifest = encoder, runner, manifest
        self.dtype, self.callbacks, self.stain = dtype, callbacks, stain
        self.rows: list[ManifestRow] = []
        self.run: _SlideRun | None = None
        self.pending: tuple[_SlideRun, PendingFeatures, np.ndarray, np.ndarray | None] | None
        self.pending = None

    def start(self, job: SlideJob) -> _SlideRun:
        return _SlideRun(job, self.encoder.spec, self.dtype, self.stain.augment.k)

    def finish(self, run: _SlideRun) -> None:
        """Commit (or fail) ``run``'s file and record its manifest row."""
        row = _finish(run, self.encoder, self.runner, self.manifest, self.stain)
        self.rows.append(row)
        if self.callbacks.on_slide:
            self.callbacks.on_slide(row)

    def drain(self) -> None:
        """Write the pending batch's features (waiting for them) to their slide's file."""
        if self.pending is None:
            return
        prun, feats, coords, aug = self.pending
        self.pending = None
        if not prun.failed:
            try:
                prun.writer.append(feats.numpy(), coords, aug)
            except OverflowError as e:  # float16 storage of out-of-range features
                prun.fail(str(e))

    def batch(
        self,
        job: SlideJob,
        imgs: torch.Tensor,
        tile_idx: torch.Tensor,
        status: torch.Tensor,
        errors: list[str],
    ) -> None:
        """Take one batch of ``job``'s tiles: finish the previous slide when this one is new,
        record undecodable tiles, submit the good ones to the encoder."""
        if self.run is None or self.run.job is not job:
            self.drain()
            if self.run is not None:
                self.finish(self.run)
            self.run = self.start(job)
        run = self.run
        if self.callbacks.on_tiles:
            self.callbacks.on_tiles(job.slide_id, len(tile_idx))
        if run.failed:
            return
        if bool((status == SLIDE_FAILED).any()):
            self.drain()
            run.fail(errors[int((status == SLIDE_FAILED).nonzero()[0, 0])])
            return
        ok = status == TILE_OK
        if not bool(ok.all()):
            bad = (~ok).nonzero().flatten().tolist()
            run.writer.add_failed(job.coords[tile_idx[bad].numpy()])
            run.first_tile_error = run.first_tile_error or errors[bad[0]]
        if bool(ok.any()):
            sel = tile_idx[ok].numpy()
            if imgs.shape[-1] != job.out_px:  # native batches at read size (GPU runs)
                imgs = resize_batch(imgs.to(self.runner.device), job.out_px)
            good = self.stain.normalise(imgs if bool(ok.all()) else imgs[ok])
            submitted = self.runner.submit(good)
            aug = self._augmented(good, job, int(sel[0]))
            self.drain()
            self.pending = (run, submitted, job.coords[sel], aug)

    def _augmented(self, good: torch.Tensor, job: SlideJob, first_row: int) -> np.ndarray | None:
        """Features (n, K, D) of the K HED-jittered copies of a batch (None when K = 0)."""
        if self.stain.augment.k == 0:
            return None
        copies = self.stain.augmented(good, key=job.slide_id, first_row=first_row)
        return np.stack([self.runner(c).numpy() for c in copies], axis=1)

    def end(self) -> None:
        """All batches seen: write the last features and finish the last slide."""
        self.drain()
        if self.run is not None:
            self.finish(self.run)
            self.run = None

    def abort(self) -> None:
        """Interrupted or crashed mid-slide: leave no partial file."""
        if self.run is not None:
            self.run.writer.abort()


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
    stain: StainTransform | None = None,
) -> list[ManifestRow]:
    """Encode every job; returns one manifest row per job (also written to ``manifest``)."""
    state = _Extraction(
        encoder,
        runner,
        manifest,
        dtype=dtype,
        callbacks=callbacks or ExtractCallbacks(),
        stain=stain or StainTransform(None, AugmentSpec(), runner.device),
    )
    for job in (j for j in jobs if j.n_tiles == 0):  # nothing to read: an empty, valid file
        state.finish(state.start(job))
    jobs = [j for j in jobs if j.n_tiles > 0]
    if not jobs:
        return state.rows
    # on a GPU, native batches come at read size and are resized there
    dataset = TileDataset(jobs, resize_in_worker=runner.device.type != "cuda")
    loader = make_loader(
        dataset, batch_size=batch_size, workers=workers, pin=runner.device.type == "cuda"
    )
    with signals_blocked():  # the workers start here; they unblock after ignoring SIGINT
        batches = iter(loader)
    try:
        for imgs, job_idx, tile_idx, status, errors in batches:
            checkpoint()
            state.batch(jobs[int(job_idx[0])], imgs, tile_idx, status, errors)
        state.end()
    finally:
        state.abort()
        _stop_loader(batches)
        dataset.close()
    return state.rows


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
    tune_malloc()  # before the encoder's buffers exist (PATHFL_MALLOC_TUNING=0 disables it)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    encoder = create_encoder(opts.encoder, weights=opts.weights, options=opts.encoder_options)
    runner = InferenceRunner(encoder, device=opts.device, precision=opts.precision)
    stain = make_stain_transform(
        norm=opts.stain_norm,
        ref_path=opts.stain_ref,
        augment=AugmentSpec(opts.stain_augment, opts.stain_sigma, opts.stain_bias, opts.stain_seed),
        device=runner.device,
    )
    plan = make_plan(
        tiles_dir,
        out_dir,
        encoder_name=encoder.spec.name,
        weights_sha256=encoder.weights_sha256,
        encoder_config_sha256=encoder.config_sha256,
        transform_for=transform_for(
            encoder.spec, stain.record(), allow_resolution_mismatch=opts.allow_resolution_mismatch
        ),
        precision=runner.precision,
        dtype=opts.dtype,
        shard=opts.shard,
        overwrite=opts.overwrite,
        slide_dir=opts.slide_dir,
        reader=opts.reader,
    )
    check_resolution(plan.jobs, encoder.spec, allow=opts.allow_resolution_mismatch)
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
    warn_tile_sizes(plan.jobs, encoder.spec)
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
        stain=stain,
    )
    return plan.done + rows


def default_workers() -> int:
    """Loader workers: all cores but one for decoding (at most 8), at least one."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))
