#!/usr/bin/env python
"""Stain normalisation: speed and fidelity of pathfl's ops (vs torchstain, scikit-image), the
extraction throughput with/without them, and their effect on the demo cohort's C-index.

    .venv/bin/python scripts/bench_stain.py [--quick] [--seeds 0 1 2] [--methods none macenko]

1. Ops, on 224-px tiles of the CMU slide (or the demo's tiles): tiles/s of pathfl's batched
   Macenko / Reinhard / HED jitter and of torchstain's per-image ones (when torchstain is
   importable), and the max |difference| of the outputs on the same tiles and reference.
2. The tiny demo cohort (three hospitals that differ in stain and scanner), tiled once,
   extracted once per method (reference fitted on a sample of site A's tiles), then for each
   seed: `pathfl fl simulate` + the demo's pooled and local-only baselines, scored on the same
   validation patients. Prints Markdown tables."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pathfl.features import stain  # noqa: E402

CMU = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed (the default: 0 1 2)")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument(
        "--methods",
        nargs="*",
        default=["none", "macenko", "reinhard", "macenko+aug2"],
        help="stain norm, optionally +augK (K HED-jittered copies per tile used in training)",
    )
    p.add_argument("--batch", type=int, default=32, help="tiles per batch in the op timing")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--skip-demo", action="store_true", help="only the op benchmark")
    p.add_argument("--skip-ops", action="store_true", help="only the demo part")
    p.add_argument(
        "--extract-only", action="store_true", help="demo part: only the extractions (kept)"
    )
    return p.parse_args()


def cmu_tiles(n: int, px: int = 224) -> torch.Tensor:
    """Up to ``n`` tissue tiles (uint8 (n, 3, px, px)) of the CMU slide, on a grid."""
    from pathfl.slide import open_slide

    slide = open_slide(CMU)
    w, h = slide.dimensions
    tiles = []
    for y in range(0, h - px, px):
        for x in range(0, w - px, px):
            a = np.asarray(slide.read_region((x, y), 0, (px, px)).convert("RGB"))
            if a.mean() < 215:
                tiles.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
    slide.close()
    return torch.stack(tiles[:n])


def rate(fn, n_tiles: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_tiles / best


def _torchstain_macenko(ts, ref_img, tiles):
    norm = ts.normalizers.MacenkoNormalizer(backend="torch")
    norm.fit(ref_img)

    def run():
        return torch.stack(
            [norm.normalize(I=t, stains=False)[0].permute(2, 0, 1) for t in tiles]
        ).clamp(0, 255)

    return norm, run


def op_benchmark(tiles: torch.Tensor) -> list[str]:
    ref_img, batch = tiles[0], tiles[1:]
    n = len(batch)
    he, max_c = stain.macenko_fit(ref_img.unsqueeze(0))
    lab_mean, lab_std = stain.reinhard_fit(ref_img.unsqueeze(0))
    gen = torch.Generator().manual_seed(0)
    rows = [
        ("Macenko", "pathfl (batched)", rate(lambda: stain.macenko_normalise(batch, he, max_c), n)),
        ("Reinhard", "pathfl (batched)",
         rate(lambda: stain.reinhard_normalise(batch, lab_mean, lab_std), n)),
        ("HED jitter", "pathfl (batched)",
         rate(lambda: stain.hed_jitter(batch, sigma=0.05, bias=0.02, generator=gen), n)),
    ]  # fmt: skip
    fidelity = []
    skimage_lab = _skimage_lab_diff(batch)
    if skimage_lab is not None:
        fidelity.append(("L*a*b* conversion vs scikit-image rgb2lab", f"{skimage_lab:.2e}", ""))
    try:
        import torchstain as ts
    except ImportError:
        ts = None
    if ts is not None:
        from importlib.metadata import version

        ts.__version__ = version("torchstain")  # its module attribute lags the release
        tnorm, trun = _torchstain_macenko(ts, ref_img, batch)
        rows.append(("Macenko", f"torchstain {ts.__version__} (per image)", rate(trun, n, 1)))
        fidelity += _macenko_fidelity(tnorm, trun, batch, he)
        rein = ts.normalizers.ReinhardNormalizer(backend="torch")
        rein.fit(ref_img)
        t_rein = lambda: torch.stack([rein.normalize(t).permute(2, 0, 1) for t in batch])  # noqa: E731
        rows.append(("Reinhard", f"torchstain {ts.__version__} (per image)", rate(t_rein, n, 1)))
        ours = stain.reinhard_normalise(batch, rein.target_means, rein.target_stds)
        d = (ours.int() - t_rein().int()).abs()
        within = f"{float((d <= 1).float().mean()) * 100:.2f} %"
        fidelity.append(
            ("Reinhard output vs torchstain (same reference)", f"{int(d.max())}", within)
        )
    dev = "CPU" if not torch.cuda.is_available() else "CPU (GPU not used here)"
    out = [
        f"Ops on {n} tissue tiles of 224 px ({'CMU-1-Small-Region' if CMU.is_file() else 'demo'}"
        f"), one batch, {dev}, {torch.get_num_threads()} torch threads; best of 3 "
        "(torchstain: 1) after a warm-up.",
        "",
        "| op | implementation | tiles/s |",
        "|---|---|---:|",
        *(f"| {a} | {b} | {r:,.1f} |" for a, b, r in rows),
        "",
    ]
    if ts is None:
        out += [
            "_torchstain not importable here: no comparison with it (`pip install torchstain`)._",
            "",
        ]
    out += ["| fidelity check | max abs diff | pixels within 1 level |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in fidelity]
    return out


def _skimage_lab_diff(batch: torch.Tensor) -> float | None:
    try:
        from skimage.color import rgb2lab
    except ImportError:
        return None
    rgb = batch[:4].permute(0, 2, 3, 1).numpy() / 255.0
    ref = np.stack([rgb2lab(x) for x in rgb])
    ours = stain.rgb_to_lab(batch[:4].reshape(4, 3, -1).float() / 255.0)
    ours = ours.reshape(4, 3, 224, 224).permute(0, 2, 3, 1).numpy()
    return float(np.abs(ref - ours).max())


def _macenko_fidelity(tnorm, trun, batch, he) -> list[tuple[str, str, str]]:
    t_he, t_max = tnorm.HERef.float(), tnorm.maxCRef.float()
    out = [("Macenko stain matrix of the reference tile vs torchstain's",
            f"{float((t_he - he).abs().max()):.2e}", "")]  # fmt: skip
    ours = stain.macenko_normalise(batch, t_he, t_max).int()
    theirs = trun().int()
    d = (ours - theirs).abs()
    # torchstain rebuilds Io·exp(-OD) without the -1 of its OD's (I + 1) and truncates
    d_adj = (ours - (theirs - 1).clamp(min=0)).abs()
    out.append(("Macenko output vs torchstain (same reference)", f"{int(d.max())}",
                f"{float((d <= 1).float().mean()) * 100:.2f} %"))  # fmt: skip
    out.append(("… vs torchstain − 1 (its reconstruction offset)", f"{int(d_adj.max())}",
                f"{float((d_adj <= 1).float().mean()) * 100:.2f} %"))  # fmt: skip
    return out


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    n_op = args.batch + 1
    tiles = cmu_tiles(n_op) if CMU.is_file() and not args.skip_ops else None
    if tiles is not None and not args.skip_ops:
        print("\n".join(op_benchmark(tiles)) + "\n", flush=True)
    if args.skip_demo:
        return
    from stain_effect import run_effect  # scripts/stain_effect.py

    root = args.out or Path(tempfile.mkdtemp(prefix="bench_stain_"))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    lines = run_effect(root, methods=args.methods, seeds=seeds, extract_only=args.extract_only)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
