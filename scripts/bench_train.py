"""Benchmark of survival MIL training on CPU: seconds per epoch and peak RSS per model.

Default workload (the issue's): 500 bags x 2,000 tiles x 1,024-d features held in memory,
``--max-tiles 2000`` (no subsampling), batches of 16 bags, discrete-time NLL loss, one
epoch after one warm-up step. Each model runs in its own subprocess so its peak RSS
(``ru_maxrss``) is its own. ``--quick``: 60 bags x 500 tiles x 256-d.

    .venv/bin/python scripts/bench_train.py [--quick] [--models abmil,chowder,...]
        [--threads N] [--dtype float32|float16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from pathfl.survival.data import PatientBag
    from pathfl.survival.train import TrainConfig, build_model, fit_time_bins, train_local

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    dtype = np.float16 if args.dtype == "float16" else np.float32
    t0 = time.perf_counter()
    bags = []
    for i in range(args.bags):
        feats = rng.standard_normal((args.tiles, args.dim), dtype=np.float32).astype(dtype)
        bags.append(
            PatientBag(
                f"P{i}",
                feats,
                float(rng.exponential(10) + 0.1),
                int(rng.random() < 0.6),
                None,
                [f"S{i}"],
                np.zeros(args.tiles, np.int64),
                np.zeros((args.tiles, 2), np.int64),
            )
        )
    gen_s = time.perf_counter() - t0
    ev = np.array([b.event for b in bags])
    t = np.array([b.time for b in bags])
    cfg = TrainConfig(
        model=args.model, loss=args.loss, max_tiles=args.max_tiles, bags_per_batch=16, epochs=1
    )
    tb = fit_time_bins(t, ev, n_bins=4) if args.loss == "nll" else None
    model = build_model(cfg, feature_dim=args.dim)
    train_local(model, bags[:16], cfg, epochs=1, time_bins=tb)  # warm-up
    t0 = time.perf_counter()
    train_local(model, bags, cfg, epochs=args.epochs, time_bins=tb)
    sec = (time.perf_counter() - t0) / args.epochs
    return {
        "model": args.model,
        "seconds_per_epoch": round(sec, 2),
        "ms_per_bag": round(1000 * sec / args.bags, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "data_gen_s": round(gen_s, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="abmil,chowder,transmil,meanpool")
    ap.add_argument("--loss", default="nll", choices=["nll", "cox"])
    ap.add_argument("--bags", type=int, default=None)
    ap.add_argument("--tiles", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--max-tiles", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--model", help=argparse.SUPPRESS)  # internal: run one model
    args = ap.parse_args()
    bags, tiles, dim = (60, 500, 256) if args.quick else (500, 2000, 1024)
    args.bags, args.tiles, args.dim = args.bags or bags, args.tiles or tiles, args.dim or dim
    args.max_tiles = args.max_tiles or args.tiles
    if args.model:
        print(json.dumps(_one(args)))
        return
    results = []
    for m in args.models.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--model",
            m,
            "--bags",
            str(args.bags),
            "--tiles",
            str(args.tiles),
            "--dim",
            str(args.dim),
            "--max-tiles",
            str(args.max_tiles),
            "--epochs",
            str(args.epochs),
            "--threads",
            str(args.threads),
            "--dtype",
            args.dtype,
            "--loss",
            args.loss,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(res)
        print(
            f"{m:9s} {res['seconds_per_epoch']:8.2f} s/epoch  {res['ms_per_bag']:7.2f} ms/bag"
            f"  peak RSS {res['peak_rss_mb']:8.1f} MB  ({res['n_params']} params)",
            flush=True,
        )
    summary = {
        "workload": {
            k: getattr(args, k)
            for k in ("bags", "tiles", "dim", "max_tiles", "loss", "threads", "dtype", "epochs")
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version},
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
