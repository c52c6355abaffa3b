"""Benchmark `pathfl extract`: (a) encoder forward tiles/s on in-memory uint8 tensors, with
glibc's default malloc (a0, "untuned") and with pathfl's malloc tuning (a, "tuned",
pathfl.features.malloc), (b) end-to-end tiles/s (read + decode + resize + forward + HDF5 write,
the default path, i.e. tuned) on the CMU slide and on a generated larger slide, b/a, plus (r)
read-only tiles/s of the tile loader (what bounds b when compute is fast). Every figure comes
from a fresh process (malloc settings are per process), repeated ``--repeats`` times in
interleaved order (a0, a, b, a0, a, b, ...) so the ratios see the same machine load; the table
gives medians, the main process's user and sys CPU seconds, and its peak RSS. Prints markdown.

    .venv/bin/python scripts/bench_extract.py [--quick] [--device cuda] [--precisions fp32 bf16]

mobilenet-v2 uses its packaged ImageNet weights; resnet50-trunc uses the torch hub cache if
present, else a randomly initialised torchvision ResNet50 saved to a temporary file (timing
only; the table says so)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
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
    p.add_argument("--repeats", type=int, default=0, help="interleaved repeats (0: 3, quick 2)")
    p.add_argument(
        "--e2e-untuned",
        action="store_true",
        help="also end-to-end with PATHFL_MALLOC_TUNING=0 (its speed and peak RSS)",
    )
    p.add_argument("--n-batches", type=int, default=0, help="forward batches (0: 10, quick 2)")
    p.add_argument("--weights", default="", help=argparse.SUPPRESS)
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # child: MODE ENC PREC [TILES]
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


def encoder_weights(encoders: list[str], work: Path, notes: list[str]) -> dict[str, Path | None]:
    """Weights per encoder: packaged/cached ones (None), or random ResNet50 ones (timing only)."""
    import torch

    from pathfl.features.weights import cached_resnet50

    weights: dict[str, Path | None] = {}
    if "resnet50-trunc" in encoders and cached_resnet50() is None:
        import torchvision

        rnd = work / "resnet50-random.pth"
        torch.save(torchvision.models.resnet50().state_dict(), rnd)
        weights["resnet50-trunc"] = rnd
        notes.append("resnet50-trunc: RANDOM weights (no ImageNet file here) — timing only")
    return weights


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints JSON (rate, n, user/sys s, peak RSS)."""
    import torch

    from pathfl.features.encoders import create_encoder
    from pathfl.features.inference import InferenceRunner
    from pathfl.features.malloc import tune_malloc
    from pathfl.features.options import ExtractOptions

    mode, enc_name, precision, *rest = args.one
    weights = Path(args.weights) if args.weights else None
    if args.threads:
        torch.set_num_threads(args.threads)
    c0, n = os.times(), 0
    if mode.startswith("forward"):
        applied = tune_malloc(enabled=mode == "forward-tuned")
        runner = InferenceRunner(
            create_encoder(enc_name, weights=weights), device=args.device, precision=precision
        )
        c0 = os.times()
        rate = forward_rate(
            runner, batch_size=args.batch_size, n_batches=args.n_batches, device=args.device
        )
        n = args.batch_size * args.n_batches
    else:  # e2e: extract() tunes malloc itself unless PATHFL_MALLOC_TUNING=0
        opts = ExtractOptions(
            encoder=enc_name,
            weights=weights,
            batch_size=args.batch_size,
            device=args.device,
            precision=precision,
            workers=args.workers,
            threads=args.threads or None,
        )
        rate, n = end_to_end(Path(rest[0]), Path(rest[1]), opts)
        applied = tune_malloc(enabled=None)
    c1 = os.times()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fig = {"rate": rate, "n": n, "user": c1.user - c0.user, "sys": c1.system - c0.system}
    print(json.dumps({**fig, "rss_mib": rss, "tuned": bool(applied)}))


def run_child(cmd: list[str], env: dict[str, str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"{cmd[3:]} failed: {res.stderr.strip()[-800:]}") from None


def measure(args, enc: str, precision: str, weights: Path | None, slides: dict, work: Path):
    """Interleaved repeats of every mode for one (encoder, precision); medians per mode."""
    base = [sys.executable, __file__, "--batch-size", str(args.batch_size)]
    base += ["--device", args.device, "--threads", str(args.threads), "--workers"]
    base += [str(args.workers), "--n-batches", str(args.n_batches)]
    base += ["--weights", str(weights) if weights else ""]
    modes = [("forward-untuned", None, "0"), ("forward-tuned", None, "1")]
    for name, tiles in slides.items():
        modes.append((f"e2e {name}", tiles, "1"))
        if args.e2e_untuned:
            modes.append((f"e2e-untuned {name}", tiles, "0"))
    got: dict[str, list[dict]] = {m[0]: [] for m in modes}
    for rep in range(args.repeats):
        for label, tiles, tuning in modes:
            cmd = [*base, "--one", label.split()[0], enc, precision]
            if tiles is not None:
                cmd += [str(tiles), str(work / f"out_{rep}")]
            env = {**os.environ, "PATHFL_MALLOC_TUNING": tuning, "PYTHONPATH": str(REPO)}
            got[label].append(run_child(cmd, env))
            print(f"  {enc}/{precision} rep {rep}: {label} {got[label][-1]}", file=sys.stderr)
    return {
        label: {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "tuned"}
        for label, runs in got.items()
    }


def table(results: dict, slides: dict) -> list[str]:
    header = ["encoder", "precision", "(a0) forward untuned", "(a) forward tuned", "a/a0"]
    for name in slides:
        header += [f"(b) e2e {name}", "b/a"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cpu = [
        "| encoder | precision | mode | tiles/s | tiles per CPU s | user s | sys s | peak RSS MiB |"
    ]
    cpu.append("|---|---|---|---:|---:|---:|---:|---:|")
    for (enc, prec), m in results.items():
        a0, a = m["forward-untuned"]["rate"], m["forward-tuned"]["rate"]
        cells = [enc, prec, f"{a0:,.1f}", f"{a:,.1f}", f"{a / a0:.2f}"]
        for name in slides:
            b = m[f"e2e {name}"]
            cells += [f"{b['rate']:,.1f} ({b['n']:.0f} tiles)", f"{b['rate'] / a:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
        for label, f in m.items():
            per_cpu = f["n"] / max(1e-9, f["user"] + f["sys"])
            cpu.append(
                f"| {enc} | {prec} | {label} | {f['rate']:,.1f} | {per_cpu:,.1f} | {f['user']:.2f} "
                f"| {f['sys']:.2f} | {f['rss_mib']:.0f} |"
            )
    return [*lines, "", *cpu]


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    args.n_batches = args.n_batches or (2 if args.quick else 10)
    if args.one:
        child(args)
        return
    import torch

    from pathfl.features.pipeline import default_workers

    args.workers = default_workers() if args.workers < 0 else args.workers
    args.repeats = args.repeats or (2 if args.quick else 3)
    large_px = args.large_px or (4096 if args.quick else 16384)
    tmp = tempfile.TemporaryDirectory(prefix="bench_extract_")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    weights = encoder_weights(args.encoders, work, notes)
    load0 = os.getloadavg()
    slides = make_tiles(work, large_px, args.copies)
    reads = {
        name: read_only_rate(t, batch_size=args.batch_size, workers=args.workers)
        for name, t in slides.items()
    }
    results = {}
    for enc_name in args.encoders:
        for precision in args.precisions:
            results[enc_name, precision] = measure(
                args, enc_name, precision, weights.get(enc_name), slides, work
            )
    if args.device.startswith("cuda"):
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{os.cpu_count()} CPU cores"
    load = (
        "/".join(f"{x:.1f}" for x in load0) + " → " + "/".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"device={args.device} ({hw}), torch threads={args.threads or torch.get_num_threads()}, "
        f"loader workers={args.workers}, batch={args.batch_size}, {args.n_batches} forward "
        f"batches, medians of {args.repeats} interleaved repeats, load average {load}, "
        f"torch {torch.__version__}"
    )
    print("tiles/s; (r) read-only loader: " + ", ".join(f"{k} {v:,.0f}" for k, v in reads.items()))
    print(
        "user/sys: CPU seconds of the encoder process during the measurement (not workers); "
        "tiles per CPU s = tiles / (user + sys), the load-independent view of a/a0."
    )
    for note in notes:
        print(f"note: {note}")
    print()
    print("\n".join(table(results, slides)))
    tmp.cleanup()


if __name__ == "__main__":
    main()
