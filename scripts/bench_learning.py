#!/usr/bin/env python
"""Learning benchmark: what a user gets with *default settings*, side by side with the
linear-cox baseline and the oracle, on cohorts pathfl was not tuned on.

Datasets: (a) real survival data shipped with scikit-survival (GBSG2, WHAS500, veterans,
flchain), one-instance bags, split into sites by a seeded case-mix rule; (b) planted-signal MIL
cohorts (50/200/1,000 patients, 64-d and 1,280-d tile features, per-site shift and scale),
several seeds.

Part 1 (`train`): 5-fold out-of-fold Harrell C of the default `pathfl train` recipe
(:func:`pathfl.survival.cv.cross_validate`, exactly what the CLI runs) vs the linear-cox
baseline on the same folds vs the oracle (true log-hazard; planted cohorts only) and the tile
oracle (the log-hazard an observer who knows the generator reads off each bag's tiles: the
about the most the tiles tell, see :func:`pathfl.survival.cohorts.posterior_fraction`).
Part 2 (skipped with `--no-fl`): default `pathfl fl simulate` on the same datasets (``--quick``:
GBSG2 only; ``--fl-datasets`` to choose) vs its pooled and local-only baselines and the
linear-cox fits, on the same within-site validation pairs. Federations run
in-process by default (:mod:`pathfl.fl.flower.inprocess`, no network, same weights as real
processes); `--transport flower` starts real SuperLink + SuperNode processes on 127.0.0.1.

    python scripts/bench_learning.py --quick          # a subset (what `make bench` runs)
    python scripts/bench_learning.py                  # everything (2 seeds), federated too
    python scripts/bench_learning.py --no-fl          # the `train` part only
    python scripts/bench_learning.py --no-train --fl-datasets gbsg2 --seeds 3   # FL part only
    python scripts/bench_learning.py --oracles --seeds 10   # oracle vs tile oracle, no training
    python scripts/bench_learning.py --linear-ceiling --seeds 4   # best ridge in hindsight
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pathfl.survival.cohorts import (  # noqa: E402
    Cohort,
    planted_cohort,
    sksurv_cohort,
    write_sites,
)

QUICK = ["veterans", "gbsg2", "planted-200x64"]
FULL = [
    "gbsg2",
    "whas500",
    "veterans",
    "flchain",
    "planted-50x64",
    "planted-200x64",
    "planted-1000x64",
    "planted-200x1280",
    "planted-50x1280",
    "planted-1000x1280",
]
FL_QUICK = ["gbsg2"]  # 3 sites; without --quick the federated part runs every dataset


def make(name: str, seed: int) -> Cohort:
    if name.startswith("planted-"):
        n, d = (int(v) for v in name.split("-")[1].split("x"))
        tiles = (80, 400) if n * d <= 200 * 1280 else (40, 120)
        return planted_cohort(n_patients=n, feature_dim=d, tiles=tiles, seed=seed)
    return sksurv_cohort(name, seed=seed, max_patients=2000)


def train_row(cohort: Cohort, seed: int, out: Path) -> dict:
    from pathfl.survival.cv import cross_validate
    from pathfl.survival.data import targets
    from pathfl.survival.metrics import harrell_c
    from pathfl.survival.train import TrainConfig

    cfg = TrainConfig(seed=seed, n_boot=100)
    t0 = time.perf_counter()
    m = cross_validate(cohort.bags, cfg, out, final_model=False)
    ev, t = targets(cohort.bags)

    def known(score: np.ndarray | None) -> float:
        return harrell_c(ev, t, score) if score is not None else np.nan

    return {
        "dataset": cohort.name,
        "seed": seed,
        "n": len(cohort.bags),
        "events": int(ev.sum()),
        "train_c": m["pooled_oof"]["c_index"],
        "train_ci": m["pooled_oof"].get("c_index_ci95", (np.nan, np.nan)),
        "lc_c": m["linear_cox"]["c_index"],
        "oracle_c": known(cohort.log_hazard),
        "tile_oracle_c": known(cohort.tile_log_hazard),
        "seconds": time.perf_counter() - t0,
    }


def fl_row(cohort: Cohort, seed: int, work: Path, *, transport: str = "inprocess") -> dict:
    """Default `pathfl fl simulate` on the cohort's sites; ``transport``: ``inprocess``
    (:mod:`pathfl.fl.flower.inprocess`, no network) or ``flower`` (real processes)."""
    from pathfl.fl.flower.simulate import simulate, site_specs

    specs = site_specs(write_sites(cohort, work / "sites"))
    t0 = time.perf_counter()
    summary = simulate(specs, {"seed": seed}, work / "run", transport=transport)
    base = summary.get("baselines", {})
    metrics = json.loads((work / "run" / "metrics.json").read_text())

    def c(key: str) -> float:
        return float(base.get(key, {}).get("federated_c_index", np.nan))

    return {
        "dataset": cohort.name,
        "seed": seed,
        "federated": summary["federated_c_index"],
        "pooled": c("pooled"),
        "local_only": c("local_only"),
        "lc_fed": float((metrics.get("linear_cox") or {}).get("federated_c_index", np.nan)),
        "lc_pooled": c("linear_cox_pooled"),
        "table": summary.get("table", ""),
        "seconds": time.perf_counter() - t0,
    }


def fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3f}"


TRAIN_LC, TRAIN_ORACLE, FL_POOLED_MARGIN = 0.97, 0.9, 0.02  # issue 10's targets


def _mean_range(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})"


def _by_dataset(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """``rows`` grouped by dataset, in first-seen order."""
    return [
        (n, [r for r in rows if r["dataset"] == n])
        for n in dict.fromkeys(r["dataset"] for r in rows)
    ]


def train_summary(rows: list[dict]) -> str:
    """Per dataset, means over its seeds of train ÷ linear-cox and train ÷ oracle against the
    targets (≥ 0.97 × linear-cox, ≥ 0.9 × oracle where known)."""
    out = [
        "| dataset | seeds | train / linear-cox (range) | train / oracle (range) "
        "| linear-cox / oracle | tile oracle / oracle | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in _by_dataset(rows):
        lc = [r["train_c"] / r["lc_c"] for r in rs]
        ok = np.mean(lc) >= TRAIN_LC
        cells = [_mean_range(lc), "—", "—", "—"]
        if all(np.isfinite(r["oracle_c"]) for r in rs):
            orc = [r["train_c"] / r["oracle_c"] for r in rs]
            lc_or = np.mean([r["lc_c"] / r["oracle_c"] for r in rs])
            tile_or = np.mean([r["tile_oracle_c"] / r["oracle_c"] for r in rs])
            cells[1:] = [_mean_range(orc), f"{lc_or:.3f}", f"{tile_or:.3f}"]
            ok = ok and np.mean(orc) >= TRAIN_ORACLE
        out.append(f"| {name} | {len(rs)} | {' | '.join(cells)} | {'yes' if ok else 'NO'} |")
    return "\n".join(out)


def fl_summary(rows: list[dict]) -> str:
    """Per dataset, means over its seeds of federated / pooled / local-only C against the
    targets (federated ≥ pooled − 0.02 and ≥ local-only), and the largest |C| gap between the
    federated and the pooled site-stratified linear-cox."""
    out = [
        "| dataset | seeds | federated | pooled | local-only | fed − pooled | rows fed ≥ pooled − "
        f"{FL_POOLED_MARGIN} | rows fed ≥ local-only | max abs. linear-cox fed. − pooled | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in _by_dataset(rows):
        f, p, lo = (np.array([r[k] for r in rs]) for k in ("federated", "pooled", "local_only"))
        gap = max(abs(r["lc_fed"] - r["lc_pooled"]) for r in rs)
        ok = f.mean() >= p.mean() - FL_POOLED_MARGIN and f.mean() >= lo.mean()
        out.append(
            f"| {name} | {len(rs)} | {f.mean():.3f} | {p.mean():.3f} | {lo.mean():.3f} "
            f"| {f.mean() - p.mean():+.3f} | {int((f >= p - FL_POOLED_MARGIN).sum())} of {len(rs)} "
            f"| {int((f >= lo).sum())} of {len(rs)} | {gap:.1e} | {'yes' if ok else 'NO'} |"
        )
    return "\n".join(out)


def train_part(names: list[str], seeds: range, tmp: Path) -> None:
    print("### Default `pathfl train` vs linear-cox vs oracle (5-fold out-of-fold Harrell C)\n")
    print("| dataset | seed | n | events | default train C [95% CI] | linear-cox C | oracle C "
          "| tile oracle C | train / linear-cox | train / oracle | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        for seed in seeds:
            r = train_row(make(name, seed), seed, tmp / f"{name}-{seed}")
            rows.append(r)
            lo, hi = r["train_ci"]
            print(
                f"| {r['dataset']} | {seed} | {r['n']} | {r['events']} "
                f"| {fmt(r['train_c'])} [{fmt(lo)}, {fmt(hi)}] | {fmt(r['lc_c'])} "
                f"| {fmt(r['oracle_c'])} | {fmt(r['tile_oracle_c'])} "
                f"| {fmt(r['train_c'] / r['lc_c'])} "
                f"| {fmt(r['train_c'] / r['oracle_c'])} | {r['seconds']:.0f} |",
                flush=True,
            )
    if rows:
        print(f"\nPer dataset, means over the seeds (targets: ≥ {TRAIN_LC} × linear-cox, ≥ "
              f"{TRAIN_ORACLE} × oracle where known):\n\n{train_summary(rows)}")  # fmt: skip


def fl_part(names: list[str], seeds: range, tmp: Path, transport: str) -> None:
    how = "in-process, no network" if transport == "inprocess" else "real processes"
    print(f"\n### Default `pathfl fl simulate` (3 sites, transport: {how})\n")
    print("C-index over the union of within-site validation pairs.\n")
    print(
        "| dataset | seed | federated | pooled | local-only | fed − pooled | linear-cox "
        "fed. | linear-cox pooled (stratified) | fed / linear-cox | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        for seed in seeds:
            r = fl_row(make(name, seed), seed, tmp / f"fl-{name}-{seed}", transport=transport)
            rows.append(r)
            print(
                f"| {r['dataset']} | {seed} | {fmt(r['federated'])} | {fmt(r['pooled'])} "
                f"| {fmt(r['local_only'])} | {r['federated'] - r['pooled']:+.3f} "
                f"| {fmt(r['lc_fed'])} | {fmt(r['lc_pooled'])} "
                f"| {fmt(r['federated'] / r['lc_pooled'])} | {r['seconds']:.0f} |",
                flush=True,
            )
    if rows:
        targets = f"federated ≥ pooled − {FL_POOLED_MARGIN} and ≥ the local-only models"
        print(f"\nPer dataset, means over the seeds (targets: {targets}):\n\n{fl_summary(rows)}")
    for r in rows:
        print(f"\nComparison table of `fl simulate`, {r['dataset']} seed {r['seed']}:\n\n"
              f"{r['table']}")  # fmt: skip


def oracles_part(names: list[str], seeds: range) -> None:
    """Oracle vs tile oracle C on the planted cohorts (no training): how much of the oracle
    the tiles themselves allow."""
    from pathfl.survival.data import targets
    from pathfl.survival.metrics import harrell_c

    print("### Oracle vs tile oracle (Harrell C over all patients, no training)\n")
    print("| dataset | seeds | oracle C | tile oracle C | tile oracle / oracle (range) |")
    print("|---|---|---|---|---|")
    for name in (n for n in names if n.startswith("planted-")):
        rows = []
        for seed in seeds:
            c = make(name, seed)
            ev, t = targets(c.bags)
            rows.append((harrell_c(ev, t, c.log_hazard), harrell_c(ev, t, c.tile_log_hazard)))
        o, tl = np.array(rows).T
        print(f"| {name} | {len(rows)} | {o.mean():.3f} | {tl.mean():.3f} "
              f"| {_mean_range(list(tl / o))} |", flush=True)  # fmt: skip


CEILING_ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def _ceiling_row(name: str, seed: int) -> dict[str, float]:
    """One planted cohort: out-of-fold C ÷ oracle of linear-cox at every ridge strength of
    :data:`CEILING_ALPHAS` (the folds of `train`), of the bag means projected on the hidden
    direction (no fitting), and of the tile oracle."""
    from pathfl.survival.data import make_folds, targets
    from pathfl.survival.linear_cox import LinearCox, bag_rows
    from pathfl.survival.metrics import harrell_c

    c = make(name, seed)
    ev, t = targets(c.bags)
    x = bag_rows(c.bags)
    oof = {a: np.zeros(len(x)) for a in CEILING_ALPHAS}
    for tr, va in make_folds(c.bags, k=5, seed=seed):
        for a in CEILING_ALPHAS:
            lc = LinearCox(alpha_per_patient=a).fit(x[tr], time=t[tr], event=ev[tr])
            oof[a][va] = lc.predict(x[va])
    oracle = harrell_c(ev, t, c.log_hazard)
    row = {f"alpha {a:g}": harrell_c(ev, t, v) / oracle for a, v in oof.items()}
    row["direction"] = harrell_c(ev, t, x @ c.signal_direction) / oracle
    row["tile oracle"] = harrell_c(ev, t, c.tile_log_hazard) / oracle
    return row


def ceiling_part(names: list[str], seeds: range) -> None:
    """How far a linear model on the bag means gets on the planted cohorts: linear-cox at
    every ridge strength (the best in hindsight bounds any rule that picks one, inner
    cross-validation included) vs knowing the hidden direction vs the tile oracle."""
    print("### Linear-cox at every ridge strength, ÷ oracle (5-fold out-of-fold Harrell C)\n")
    cols = [f"alpha {a:g}" for a in CEILING_ALPHAS] + ["direction", "tile oracle"]
    print(f"| dataset | seeds | {' | '.join(cols)} | best alpha |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for name in (n for n in names if n.startswith("planted-")):
        rows = [_ceiling_row(name, seed) for seed in seeds]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in cols}
        best = max(cols[: len(CEILING_ALPHAS)], key=mean.__getitem__)
        print(f"| {name} | {len(rows)} | {' | '.join(f'{mean[k]:.3f}' for k in cols)} "
              f"| {best[6:]} |", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"datasets {QUICK}, 1 seed, 1 FL run")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="seeds per dataset (default 2)")
    ap.add_argument("--no-fl", action="store_true", help="skip the `fl simulate` part")
    ap.add_argument("--fl-datasets", nargs="*", default=None)
    ap.add_argument(
        "--transport",
        choices=("inprocess", "flower"),
        default="inprocess",
        help="`fl simulate` part: inprocess (default; same coordinator and ClientApp, no "
        "network) or flower (real SuperLink + SuperNode processes on 127.0.0.1)",
    )
    ap.add_argument("--no-train", action="store_true", help="skip the `train` part")
    ap.add_argument(
        "--oracles", action="store_true", help="only oracle vs tile oracle (planted, no training)"
    )
    ap.add_argument(
        "--linear-ceiling",
        action="store_true",
        help="only linear-cox at every ridge strength vs the hidden direction (planted)",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    names = args.datasets or (QUICK if args.quick else FULL)
    seeds = range(args.seeds or (1 if args.quick else 2))
    if args.oracles:
        oracles_part(names, seeds)
        return 0
    if args.linear_ceiling:
        ceiling_part(names, seeds)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_train:
            train_part(names, seeds, Path(tmp))
        if not args.no_fl:
            fl_names = args.fl_datasets or (FL_QUICK if args.quick else names)
            fl_part(fl_names, seeds, Path(tmp), args.transport)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
