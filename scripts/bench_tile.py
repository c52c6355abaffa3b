#!/usr/bin/env python
"""Benchmark `pathfl tile` on the real CMU slide and a generated large pyramidal JPEG slide,
with both slide backends, and (``--huge``) on a generated 100,352² slide with ~3 % tissue.

For every (slide, backend) a fresh process (so peak RSS is per run) measures:
  * tiling: wall time of tile_slide (open, tissue mask, grid, QC thumbnail, GeoJSON, coords
    file) and tissue tiles found per second;
  * reading: tiles/s of read_tile over an evenly spaced sample of the tiles (what the
    extraction stage does per tile, without the encoder).
  * peak RSS of the process after tiling (before any tile read) and at the end.
``--clam`` (on by default; ``--no-clam`` to skip) adds, per slide, rows for the CLAM-style
reference (``scripts/clam_style_reference.py``: CLAM's ``create_patches_fp.py --seg --patch
--stitch`` defaults reimplemented — level 0, 256-px patches, step 256; each preset in its own
fresh process, interleaved with the pathfl rows of that slide) and a table of
"pathfl wall ÷ CLAM-style wall" and of the peak RSS. CLAM's defaults drop every contour on
a single-level slide as small as CMU-1-Small-Region (``a_t`` = 100 × 512² level-0 px² is more
than the whole slide), so the CMU slide also gets CLAM's ``bwh_biopsy`` preset.
``--compare REV`` runs every row also with the pathfl of git revision REV (``git archive``
into a temporary folder, first on PYTHONPATH), interleaved with this tree's rows, so "before"
and "after" see the same machine load; ``--repeats N`` repeats the whole interleaved sequence
(the table shows medians). Prints a markdown table. Generated slides are cached.

    .venv/bin/python scripts/bench_tile.py              # 40960 x 40960 slide, 1000 tile reads
    .venv/bin/python scripts/bench_tile.py --quick      # 16384 x 16384 slide, 200 tile reads
    .venv/bin/python scripts/bench_tile.py --quick --huge --compare 0b9e094 --repeats 2
    .venv/bin/python scripts/bench_tile.py --quick --no-clam   # pathfl rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
CLAM_REF = REPO / "scripts" / "clam_style_reference.py"


def ensure_big_slide(
    cache: Path, size: int, workers: int, *, tissue_bias: float = 0.0
) -> tuple[Path, float | None]:
    """The generated slide (cached); returns (path, seconds spent generating or None).
    ``tissue_bias`` > 0 makes less tissue (0.25: ~3 % of the area)."""
    sys.path.insert(0, str(REPO / "tests"))
    from slides import write_procedural_tiff

    sparse = f"_bias{tissue_bias:g}" if tissue_bias else ""
    path = cache / f"synthetic_{size}x{size}_0.25mpp{sparse}.tif"
    if path.is_file():
        return path, None
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    levels = 1
    while size // 2**levels >= 1024 and levels < 8:
        levels += 1
    t0 = time.perf_counter()
    write_procedural_tiff(
        tmp, size, size, mpp=0.25, levels=levels, workers=workers, tissue_bias=tissue_bias
    )
    os.replace(tmp, path)
    return path, time.perf_counter() - t0


def run_one(slide: Path, backend: str, read_tiles: int) -> dict:
    """Measure one (slide, backend) in this process; returns the figures."""
    import numpy as np

    from pathfl.formats.coords_h5 import coords_file_path, read_coords, tile_geometry
    from pathfl.slide import open_slide
    from pathfl.tiling import SlideJob, TileConfig, read_tile, tile_slide

    with tempfile.TemporaryDirectory(prefix="bench_tile_") as out:
        t0 = time.perf_counter()
        r = tile_slide(
            SlideJob(slide.stem, slide), out, TileConfig(backend=backend, overwrite=True)
        )
        tile_s = time.perf_counter() - t0
        tile_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if r.status != "ok":
            return {"error": r.error}
        coords, attrs = read_coords(coords_file_path(out, slide.stem))
    idx = np.linspace(0, len(coords) - 1, min(read_tiles, len(coords))).astype(int)
    with open_slide(slide, backend=backend) as s:
        dims, levels = s.dimensions, s.level_count
        t0 = time.perf_counter()
        for i in idx:
            read_tile(s, tuple(coords[i]), attrs)
        read_s = time.perf_counter() - t0
    return {
        "dims": f"{dims[0]}x{dims[1]}",
        "levels": levels,
        "n_tiles": len(coords),
        "tile_s": tile_s,
        "tiles_per_s": len(coords) / tile_s,
        "read_n": len(idx),
        "read_per_s": len(idx) / read_s if read_s > 0 else float("nan"),
        "patch_level": tile_geometry(attrs).patch_level,
        "read_size": tile_geometry(attrs).read_size,
        "tile_rss_mb": tile_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16k slide, 200 tile reads")
    ap.add_argument("--size", type=int, default=None, help="side of the generated slide (px)")
    ap.add_argument("--huge", action="store_true", help="add a 100,352² slide, 3 %% tissue")
    ap.add_argument("--huge-size", type=int, default=100352)
    ap.add_argument("--huge-backends", default="openslide")
    ap.add_argument("--compare", metavar="REV", help="also run git revision REV's pathfl")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=REPO / "bench_out", help="cache folder")
    ap.add_argument("--read-tiles", type=int, default=None)
    ap.add_argument("--backends", default="openslide,tiffslide")
    ap.add_argument("--gen-workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument(
        "--clam",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the CLAM-style reference on every slide (default on)",
    )
    ap.add_argument("--clam-presets", default="default", help="reference presets, every slide")
    ap.add_argument("--clam-cmu-presets", default="default,bwh_biopsy", help="on the CMU slide")
    ap.add_argument("--one", nargs=2, metavar=("SLIDE", "BACKEND"), help=argparse.SUPPRESS)
    return ap.parse_args()


def export_rev(rev: str, dest: Path) -> Path:
    """``pathfl/`` of git revision ``rev`` extracted under ``dest``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "pathfl"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_child(slide: Path, backend: str, read_tiles: int, code: Path) -> dict:
    """One row in a fresh process with ``code`` first on PYTHONPATH."""
    cmd = [sys.executable, __file__, "--one", str(slide), backend, "--read-tiles", str(read_tiles)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    try:
        fig = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        fig = {"error": res.stderr.strip()[-300:]}
    fig["process_s"] = wall
    return fig


def run_clam_child(slide: Path, preset: str) -> dict:
    """One CLAM-style reference run in a fresh process (its outputs in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="bench_clam_") as out:
        cmd = [sys.executable, str(CLAM_REF), str(slide), out, "--preset", preset]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    try:
        fig = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        fig = {"error": res.stderr.strip()[-300:]}
    fig.pop("params", None)
    fig["process_s"] = wall
    return fig


def median_rows(runs: list[dict]) -> dict:
    """Medians of the numeric figures over repeats (the first run's other fields)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for k, v in ok[0].items():
        if isinstance(v, float):
            out[k] = statistics.median(r[k] for r in ok)
    out["repeats"] = len(ok)
    return out


def print_table(rows: list[dict], gens: dict[str, float]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n### pathfl tile benchmark ({platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average at the end: {load})\n"
    )
    for name, gen_s in gens.items():
        print(f"Generated {name} in {gen_s:.1f} s.\n")
    print("target 0.5 µm/px, 224 px tiles, defaults otherwise; one process per row; medians.\n")
    print(
        "| slide | size (levels) | backend | code | tissue tiles | tile wall s | tiles/s (tiling) "
        "| read level/size | tile reads/s | peak RSS MiB after tiling | peak RSS MiB |"
    )
    print("|---|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    for f in rows:
        if "error" in f:
            print(f"| {f['slide']} | | {f['backend']} | {f['code']} | error: {f['error']} |")
            continue
        print(
            f"| {f['slide']} | {f['dims']} ({f['levels']}) | {f['backend']} | {f['code']} "
            f"| {f['n_tiles']} | {f['tile_s']:.2f} | {f['tiles_per_s']:.0f} | L{f['patch_level']}/"
            f"{f['read_size']}px | {f['read_per_s']:.0f} (n={f['read_n']}) "
            f"| {f['tile_rss_mb']:.0f} | {f['peak_rss_mb']:.0f} |"
        )


def main() -> None:
    args = parse_args()
    read_tiles = args.read_tiles or (200 if args.quick else 1000)
    if args.one:
        print(json.dumps(run_one(Path(args.one[0]), args.one[1], read_tiles)))
        return
    size = args.size or (16384 if args.quick else 40960)
    big, gen_s = ensure_big_slide(args.cache, size, args.gen_workers)
    backends = args.backends.split(",")
    cases = [(CMU, backends)] if CMU.is_file() else []
    if not CMU.is_file():
        print(f"note: {CMU} not found; CMU row skipped", file=sys.stderr)
    cases.append((big, backends))
    gens = {big.name: gen_s} if gen_s is not None else {}
    if args.huge:
        huge, huge_s = ensure_big_slide(
            args.cache, args.huge_size, args.gen_workers, tissue_bias=0.25
        )
        cases.append((huge, args.huge_backends.split(",")))
        if huge_s is not None:
            gens[huge.name] = huge_s
    runs = collect_runs(args, cases, read_tiles)
    pathfl_rows = [median_rows(r) for k, r in runs.items() if k[1] != "clam"]
    print_table(pathfl_rows, gens)
    if args.clam:
        clam_rows = [median_rows(r) for k, r in runs.items() if k[1] == "clam"]
        print_clam_table(pathfl_rows, clam_rows)


def collect_runs(
    args: argparse.Namespace, cases: list[tuple[Path, list[str]]], read_tiles: int
) -> dict[tuple, list[dict]]:
    """Every row, each in a fresh process; per slide the pathfl rows, then the reference's;
    the whole sequence ``--repeats`` times."""
    runs: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_tile_rev_") as tmp:
        codes = {"this tree": REPO}
        if args.compare:
            codes[args.compare] = export_rev(args.compare, Path(tmp))
        for rep in range(args.repeats):
            for slide, slide_backends in cases:
                for backend in slide_backends:
                    for label, code in codes.items():
                        fig = run_child(slide, backend, read_tiles, code)
                        fig.update(slide=slide.name, backend=backend, code=label)
                        runs.setdefault((slide.name, backend, label), []).append(fig)
                        print(f"done {rep}: {slide.name} / {backend} / {label}", file=sys.stderr)
                if not args.clam:
                    continue
                presets = args.clam_cmu_presets if slide == CMU else args.clam_presets
                for preset in presets.split(","):
                    fig = run_clam_child(slide, preset)
                    fig.update(slide=slide.name, backend="clam", code=preset)
                    runs.setdefault((slide.name, "clam", preset), []).append(fig)
                    print(f"done {rep}: {slide.name} / CLAM-style {preset}", file=sys.stderr)
    return runs


def print_clam_table(pathfl_rows: list[dict], clam_rows: list[dict]) -> None:
    """pathfl (this tree) against the CLAM-style reference, slide by slide."""
    print(
        "\n#### CLAM-style reference (scripts/clam_style_reference.py)\n\n"
        "pathfl: `tile_slide` with its defaults (0.5 µm/px, 224-px tiles, tissue mask at "
        "4 µm/px, QC thumbnail, GeoJSON, coords file). Reference: CLAM's `create_patches_fp.py "
        "--seg --patch --stitch` reimplemented (level 0, 256-px patches, step 256, seg and "
        "stitch at the level nearest 64×, 'four_pt' check per grid point in a process pool); "
        "preset `default` = CLAM's built-in defaults, others = CLAM's presets/*.csv. "
        "Wall = the in-process time of the tiling (imports and process start excluded) on "
        "both sides; peak RSS = the measured process (the reference's pool workers not "
        "included; largest child shown). Ratios < 1: pathfl is faster / smaller.\n"
    )
    print(
        "| slide | pathfl backend | pathfl tiles | pathfl wall s | pathfl peak RSS MiB "
        "| reference preset | ref. tiles (contours, seg level) "
        "| ref. wall s (seg/mask/patch/stitch) | ref. peak RSS MiB (largest child) "
        "| pathfl wall ÷ CLAM-style wall | pathfl RSS ÷ ref. RSS |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for c in clam_rows:
        for f in pathfl_rows:
            if f["slide"] != c["slide"] or f["code"] != "this tree":
                continue
            if "error" in c or "error" in f:
                err = c.get("error") or f.get("error")
                print(f"| {c['slide']} | {f['backend']} | | | | {c['code']} | error: {err} |")
                continue
            parts = "/".join(f"{c[k]:.2f}" for k in ("seg_s", "mask_s", "patch_s", "stitch_s"))
            print(
                f"| {c['slide']} | {f['backend']} | {f['n_tiles']} | {f['tile_s']:.2f} "
                f"| {f['tile_rss_mb']:.0f} | {c['code']} | {c['n_tiles']} ({c['n_contours']}, "
                f"L{c['seg_level']}) | {c['wall_s']:.2f} ({parts}) | {c['rss_mib']:.0f} "
                f"({c['child_rss_mib']:.0f}) | **{f['tile_s'] / c['wall_s']:.2f}** "
                f"| {f['tile_rss_mb'] / c['rss_mib']:.2f} |"
            )


if __name__ == "__main__":
    main()
