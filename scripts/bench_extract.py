"""Benchmark `pathfl extract`: (a) encoder forward tiles/s on in-memory uint8 tensors,
(b) end-to-end tiles/s (read + decode + resize + forward + HDF5 write) on the CMU slide and on a
generated larger slide, (c) b/a, plus (r) read-only tiles/s of the tile loader (what bounds b
when compute is fast). Prints a markdown table.

    .venv/bin/python scripts/bench_extract.py [--quick] [--device cuda] [--precisions fp32 bf16]

mobilenet-v2 uses its packaged ImageNet weights; resnet50-trunc uses the torch hub cache if
present, else a randomly initialised torchvision ResNet50 saved to a temporary file (timing
only; the table says so)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small slide, fewer batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoders", nargs="+", default=["mobilenet-v2", "resnet50-trunc"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="-1: cores - 1 (max 8)")
    p.add_argument("--threads", type=int, default=0, help="encoder threads on CPU; 0 = torch's")
    p.add_argument("--large-px", type=int, default=0, help="side of the generated slide (px)")
    p.add_argument(
        "--copies",
        type=int,
        default=1,
        help="list the generated slide N times (longer e2e runs for fast GPUs)",
    )
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    return p.parse_args()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_rate(runner, *, batch_size: int, n_batches: int, device: str) -> float:
    """(a): tiles/s of InferenceRunner on a uint8 batch already in memory (pinned on CUDA)."""
    import torch

    x = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
    if device.startswith("cuda"):
        x = x.pin_memory()
    for _ in range(2):
        runner.submit(x).numpy()
    sync(device)
    t0 = time.perf_counter()
    pending = None
    for _ in range(n_batches):
        nxt = runner.submit(x)
        if pending is not None:
            pending.numpy()
        pending = nxt
    pending.numpy()
    sync(device)
    return batch_size * n_batches / (time.perf_counter() - t0)


def make_tiles(work: Path, large_px: int, copies: int = 1) -> dict[str, Path]:
    """Coords files (the tile stage's own tiler) for the CMU slide and a generated slide."""
    sys.path.insert(0, str(REPO / "tests"))
    from slides import write_procedural_tiff

    from pathfl.formats.coords_h5 import coords_file_path
    from pathfl.tiling import GridParams, SlideJob, TileConfig, run_batch

    out: dict[str, Path] = {}
    config = TileConfig(grid=GridParams(target_mpp=0.5, tile_px=224))
    if CMU.is_file():
        run_batch([SlideJob("cmu", CMU)], work / "tiles_cmu", config)
        out["CMU slide"] = work / "tiles_cmu"
    big = work / f"generated_{large_px}.tif"
    if not big.is_file():
        write_procedural_tiff(big, large_px, large_px, mpp=0.25, workers=os.cpu_count() or 1)
    run_batch([SlideJob("generated", big)], work / "tiles_big", config)
    coords = coords_file_path(work / "tiles_big", "generated")
    for old in coords.parent.glob("generated_copy*.h5"):
        old.unlink()
    for i in range(1, copies):  # same slide under other ids (found via the slide_path attr)
        shutil.copyfile(coords, coords.with_name(f"generated_copy{i}.h5"))
    label = f"generated {large_px}² @0.25 mpp" + (f" ×{copies}" if copies > 1 else "")
    out[label] = work / "tiles_big"
    return out


def end_to_end(tiles: Path, out: Path, opts) -> tuple[float, int]:
    """(b): tiles/s from the first batch request to the last file renamed (encoder loading
    and planning excluded, loader start-up included)."""
    from pathfl.features.pipeline import ExtractCallbacks, extract

    shutil.rmtree(out, ignore_errors=True)
    t: dict[str, float] = {}
    cb = ExtractCallbacks(on_start=lambda plan: t.setdefault("t0", time.perf_counter()))
    rows = extract(tiles, out, options=opts, callbacks=cb)
    sync(opts.device)
    seconds = time.perf_counter() - t["t0"]
    n = sum(r.n_tiles for r in rows if r.status == "ok")
    if any(r.status != "ok" for r in rows):
        raise RuntimeError(f"extract failed: {[r.error for r in rows]}")
    return n / seconds, n


def read_only_rate(tiles: Path, *, batch_size: int, workers: int) -> float:
    """(r): tiles/s of the DataLoader alone (read + decode + resize), no encoder."""
    from pathfl.features.dataset import SlideJob, TileDataset
    from pathfl.features.pipeline import make_loader
    from pathfl.features.plan import discover_coords
    from pathfl.formats.coords_h5 import read_coords, tile_geometry

    jobs = []
    for cpath in discover_coords(tiles):
        coords, attrs = read_coords(cpath)
        geo = tile_geometry(attrs)
        jobs.append(
            SlideJob(
                cpath.stem,
                Path(attrs.get("slide_path", "")),
                cpath,
                cpath,
                coords,
                attrs,
                geo.patch_level,
                geo.read_size,
                geo.tile_size,
                str(attrs.get("backend", "auto")),
            )
        )
    ds = TileDataset(jobs)
    t0 = time.perf_counter()
    n = sum(len(b[1]) for b in make_loader(ds, batch_size=batch_size, workers=workers, pin=False))
    return n / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from pathfl.features.encoders import create_encoder
    from pathfl.features.inference import InferenceRunner
    from pathfl.features.options import ExtractOptions
    from pathfl.features.pipeline import default_workers
    from pathfl.features.weights import cached_resnet50

    if args.threads:
        torch.set_num_threads(args.threads)
    workers = default_workers() if args.workers < 0 else args.workers
    large_px = args.large_px or (4096 if args.quick else 16384)
    n_batches = 2 if args.quick else 10
    tmp = tempfile.TemporaryDirectory(prefix="bench_extract_")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    weights: dict[str, Path | None] = {"mobilenet-v2": None}
    if "resnet50-trunc" in args.encoders:
        if cached_resnet50() is None:
            import torchvision

            rnd = work / "resnet50-random.pth"
            torch.save(torchvision.models.resnet50().state_dict(), rnd)
            weights["resnet50-trunc"] = rnd
            notes.append("resnet50-trunc: RANDOM weights (no ImageNet file here) — timing only")
        else:
            weights["resnet50-trunc"] = None
    slides = make_tiles(work, large_px, args.copies)
    reads = {
        name: read_only_rate(t, batch_size=args.batch_size, workers=workers)
        for name, t in slides.items()
    }
    header = ["encoder", "precision", "(a) forward"]
    for name in slides:
        header += [f"(b) e2e {name}", "b/a"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for enc_name in args.encoders:
        encoder = create_encoder(enc_name, weights=weights.get(enc_name))
        for precision in args.precisions:
            runner = InferenceRunner(encoder, device=args.device, precision=precision)
            a = forward_rate(
                runner, batch_size=args.batch_size, n_batches=n_batches, device=args.device
            )
            cells = [enc_name, precision, f"{a:,.1f}"]
            for tiles in slides.values():
                opts = ExtractOptions(
                    encoder=enc_name,
                    weights=weights.get(enc_name),
                    batch_size=args.batch_size,
                    device=args.device,
                    precision=precision,
                    workers=workers,
                    threads=args.threads or None,
                )
                b, n = end_to_end(tiles, work / "out", opts)
                cells += [f"{b:,.1f} ({n} tiles)", f"{b / a:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    print()
    if args.device.startswith("cuda"):
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{os.cpu_count()} CPU cores"
    print(
        f"device={args.device} ({hw}), "
        f"torch threads={torch.get_num_threads()}, loader workers={workers}, "
        f"batch={args.batch_size}, torch {torch.__version__}"
    )
    print("tiles/s; (r) read-only loader: " + ", ".join(f"{k} {v:,.0f}" for k, v in reads.items()))
    for note in notes:
        print(f"note: {note}")
    print()
    print("\n".join(lines))
    tmp.cleanup()


if __name__ == "__main__":
    main()
