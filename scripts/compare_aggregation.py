"""Federated C-index of each server aggregation rule on the same sites, through
`pathfl.fl.flower.simulate` (real Flower processes on 127.0.0.1): what robustness costs when every
site is honest. The sites are bench_fl.py's synthetic cohort split into three.

    FLWR_TELEMETRY_ENABLED=0 .venv/bin/python scripts/compare_aggregation.py \\
        --out bench_out/aggregation [--aggregations fedavg,median,trimmed-mean]

``trimmed-mean`` uses ``--trim-fraction`` (default 0.34: with 3 sites it drops the largest and
smallest value per coordinate, i.e. it equals the median). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_fl import make_sites

from pathfl.fl.flower.simulate import simulate, site_specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/aggregation"))
    ap.add_argument("--aggregations", default="fedavg,median,trimmed-mean")
    ap.add_argument("--trim-fraction", type=float, default=0.34)
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dirs = make_sites(args.out / "data", n_patients=args.patients)
    cfg = {
        "rounds": args.rounds,
        "local_epochs": 2,
        "model": "meanpool",
        "loss": "cox",
        "lr": 0.005,
        "hidden_dim": 32,
        "val_folds": 3,
        "min_sites": 3,
        "seed": 1,
        "trim_fraction": args.trim_fraction,
    }
    print("| aggregation | federated C-index (within-site pairs) | wall s |")
    print("|---|---|---|")
    for name in args.aggregations.split(","):
        t0 = time.perf_counter()
        summary = simulate(
            site_specs(dirs), {**cfg, "aggregation": name}, args.out / name, baselines=False
        )
        wall = time.perf_counter() - t0
        print(f"| {name} | {summary['federated_c_index']:.4f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
