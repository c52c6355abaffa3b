"""Benchmark the tile readers of `pathfl extract` (issue 12, native-tile reader): tiles/s per
core of (o) OpenSlide ``read_region`` at 224 px, (o256) OpenSlide at 256 px resized to 224
(PIL bilinear), (n) the native-tile reader (compressed tiles by offset, batch decode with
libjpeg-turbo), (n256) native at 256 px resized to 224 (torch bilinear, antialiased) — all
through the extraction loader's own ``TileDataset`` (what a loader worker does), one thread,
modes interleaved (o, o256, n, n256, o, ...) so they see the same machine load. Also the
stored-tile decode rate of the JPEG decoders available here (imagecodecs, PIL, torchvision).
Tiles: a 224-px-step grid over level 0 in row-major order, batches of 64 (straddling the
stored tiles: 240 px on the CMU slide, 256 px on the generated one). Prints markdown.

    .venv/bin/python scripts/bench_reader.py [--quick] [--repeats 3]

"tiles per CPU s" = tiles / (user + sys seconds of this process): the per-core rate, which a
shared machine's load does not change much; "tiles/s" is wall clock."""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
BATCH = 64


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller generated slide")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--large-px", type=int, default=0, help="generated slide side (0: 4096/8192)")
    p.add_argument("--max-tiles", type=int, default=2000, help="tiles per pass and mode")
    return p.parse_args()


def make_job(path: Path, read_size: int, out_px: int, native: bool, max_tiles: int):
    from pathfl.features.dataset import SlideJob
    from pathfl.slide import open_slide

    with open_slide(path, backend="openslide") as s:
        w, h = s.dimensions
        vendor = s.vendor
    xs, ys = np.arange(0, w - read_size + 1, 224), np.arange(0, h - read_size + 1, 224)
    coords = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)[:max_tiles].astype(np.int64)
    attrs = {
        "level_dim": [w, h],
        "downsample": [1.0, 1.0],
        "level0_width": w,
        "level0_height": h,
        "vendor": vendor,
    }
    return SlideJob(
        path.stem, path, path, path, coords, attrs, 0, read_size, out_px, "openslide", None, native
    )


def one_pass(job) -> tuple[float, float, int]:
    """(wall s, CPU s, tiles) of reading every tile of ``job`` in batches, as a worker does."""
    from pathfl.features.dataset import TileDataset, collate

    ds = TileDataset([job])
    ds.__getitems__([0])  # open the handles outside the timing
    n = len(ds)
    c0, t0 = time.process_time(), time.perf_counter()
    for b in range(0, n, BATCH):
        imgs = collate(ds.__getitems__(list(range(b, min(b + BATCH, n)))))[0]
        assert imgs.shape[-1] == job.out_px
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ds.close()
    return wall, cpu, n


def decoder_rates(path: Path, n_tiles: int = 200) -> dict[str, float]:
    """Stored tiles decoded per CPU s by each JPEG decoder (same tiles; tables spliced in for
    PIL and torchvision, which also get the Adobe RGB marker when the slide needs it)."""
    import imagecodecs
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    from pathfl.slide.native_tiles import open_native_level
    from pathfl.slide.openslide_backend import OpenSlideSlide

    with OpenSlideSlide(path) as s:
        dim = s.dimensions
    native = open_native_level(path, dim)
    ids = [i for i in range(len(native.layout.counts)) if native.layout.counts[i]][:n_tiles]
    raws = [native.raw(i) for i in ids]
    full = [native.complete_jpeg(r) for r in raws]
    lay = native.layout
    fns = {
        "imagecodecs (libjpeg-turbo)": lambda: [native.decode(i) for i in ids],
        "PIL": lambda: [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in full],
        "torchvision decode_jpeg (list)": lambda: decode_jpeg(
            [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in full]
        ),
        "imagecodecs, tables, no pread": lambda: [
            imagecodecs.jpeg8_decode(
                r, tables=lay.tables or None, colorspace=2 if lay.rgb_jpeg else None
            )
            for r in raws
        ],
    }
    out = {}
    for name, fn in fns.items():
        fn()
        rates = []
        for _ in range(5):
            c0 = time.process_time()
            fn()
            rates.append(len(ids) / max(1e-9, time.process_time() - c0))
        out[name] = statistics.median(rates)
    native.close()
    return out


def slides(work: Path, large_px: int) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from slides import write_procedural_tiff

    out = {}
    if CMU.is_file():
        out["CMU slide (240-px JPEG tiles)"] = CMU
    big = work / f"generated_{large_px}.tif"
    t0 = time.perf_counter()
    write_procedural_tiff(big, large_px, large_px, mpp=0.25, levels=1)
    print(f"generated {large_px}² in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out[f"generated {large_px}² (256-px JPEG tiles)"] = big
    return out


MODES = {
    "(o) openslide read_region 224": (224, False),
    "(o256) openslide 256 → 224 (PIL bilinear)": (256, False),
    "(n) native, batch decode 224": (224, True),
    "(n256) native 256 → 224 (torch uint8 bilinear)": (256, True),
}


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    large_px = args.large_px or (4096 if args.quick else 8192)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
        found = slides(Path(tmp), large_px)
        results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
        for _ in range(args.repeats):
            for sname, path in found.items():
                for mode, (read_size, native) in MODES.items():
                    job = make_job(path, read_size, 224, native, args.max_tiles)
                    results.setdefault((sname, mode), []).append(one_pass(job))
        decoders = {name: decoder_rates(path) for name, path in found.items()}
    load1 = os.getloadavg()
    print(
        f"1 thread, batches of {BATCH}, medians of {args.repeats} interleaved repeats, "
        f"load average {'/'.join(f'{x:.1f}' for x in load0)} → "
        f"{'/'.join(f'{x:.1f}' for x in load1)} ({os.cpu_count()} cores)"
    )
    print()
    print("| slide | reader | tiles | tiles/s (wall) | tiles per CPU s | vs (o) per CPU s |")
    print("|---|---|---:|---:|---:|---:|")
    for sname in found:
        base = None
        for mode in MODES:
            runs = results[sname, mode]
            wall = statistics.median(n / w for w, _, n in runs)
            cpu = statistics.median(n / max(1e-9, c) for _, c, n in runs)
            base = base or cpu
            n = runs[0][2]
            print(f"| {sname} | {mode} | {n} | {wall:,.0f} | {cpu:,.0f} | {cpu / base:.2f} |")
    print()
    print("Stored-tile JPEG decode, tiles per CPU s (the same 200 tiles per slide, median of 5):")
    print()
    print("| slide | decoder | stored tiles per CPU s |")
    print("|---|---|---:|")
    for sname, rates in decoders.items():
        for name, rate in rates.items():
            print(f"| {sname} | {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
