#!/usr/bin/env python
"""Unseen-site benchmark: how well does a model trained without a hospital rank that
hospital's patients? Leave-one-site-out (`pathfl fl simulate --leave-one-site-out`'s folds)
on the learning benchmark's data: a scikit-survival dataset
split into 3 sites by the seeded case-mix rule (:func:`pathfl.survival.cohorts.sksurv_cohort`).

For each held-out site: the federated model over the other two sites with FedAvg, FedProx,
FedAdam and FedYogi (server optimisers at their defaults), the pooled model on the two sites'
union and the mean of their local-only models, all scored on every patient of the held-out
site (Harrell C, bootstrap 95 % CI over its patients). Personalisation: the held-out site
adapts each federated model on its own training part (`--personalise head`; FedAvg also
`norm`) and both are scored on its validation part.

    python scripts/bench_unseen_site.py --quick     # gbsg2, 1 seed (what `make bench` runs)
    python scripts/bench_unseen_site.py --seeds 3   # gbsg2, 3 seeds
    python scripts/bench_unseen_site.py --transport flower   # real Flower processes

Federations run in-process by default (:mod:`pathfl.fl.flower.inprocess`: the same
coordinator and ClientApp, no network; equal weights to real processes, see
tests/test_fl_inprocess.py); `--transport flower` starts real SuperLink + SuperNode processes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = {
    "FedAvg": {},
    "FedProx": {"proximal_mu": 0.01},
    "FedAdam": {"aggregation": "fedadam"},
    "FedYogi": {"aggregation": "fedyogi"},
}


def run_seed(
    dataset: str,
    seed: int,
    work: Path,
    *,
    rounds: int,
    held_out: list[str] | None,
    transport: str = "inprocess",
    strategies: dict[str, dict] | None = None,
    personalise: str | None = "head",
) -> tuple[list[dict], dict]:
    """Every strategy's unseen-site rows for one seed (each held-out site: one federation
    over the other sites, `pathfl fl simulate --leave-one-site-out`'s fold); seconds per
    strategy. ``transport``: ``inprocess`` (:mod:`pathfl.fl.flower.inprocess`) or ``flower``
    (real processes)."""
    from pathfl.fl.flower.loso import held_out_fold
    from pathfl.fl.flower.simulate import site_specs
    from pathfl.survival.cohorts import sksurv_cohort, write_sites

    cohort = sksurv_cohort(dataset, seed=seed, max_patients=2000)
    specs = site_specs(write_sites(cohort, work / "sites"))
    held = [s for s in specs if held_out is None or s.name in held_out]
    rows, seconds = [], {}
    for name, extra in (strategies or STRATEGIES).items():
        user = {"seed": seed, "rounds": rounds, "linear_cox": False, "n_boot": 200, **extra}
        t0 = time.perf_counter()
        for h in held:
            fold = work / name / f"held_out_{h.name}"
            res = held_out_fold(
                specs,
                h,
                user,
                fold,
                personalise=personalise,
                baselines=name == "FedAvg" and personalise is not None,
                transport=transport,
            )
            rows += [{**r, "strategy": name, "seed": seed} for r in res]
        seconds[name] = time.perf_counter() - t0
        if name == "FedAvg" and personalise is not None:
            rows += norm_rows(held, work / name, seed)
    return rows, seconds


def norm_rows(specs: list, work: Path, seed: int) -> list[dict]:
    """FedBN-style personalisation (the input standardisation refitted on the site) of the
    FedAvg models, on each held-out site's validation part."""
    import json

    from pathfl.fl.unseen_site import adapt_rows

    out = []
    for held in specs:
        run = work / f"held_out_{held.name}"
        cfg = json.loads((run / "fl_config.json").read_text())["config"]
        for r in adapt_rows(run, held, cfg, part="norm", n_boot=200):
            if "personalised" in r["method"]:
                out.append({**r, "strategy": "FedAvg", "seed": seed})
    return out


def cell(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"{r['c_index']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def find(rows: list[dict], **kw) -> dict | None:
    hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return hits[0] if hits else None


def print_tables(rows: list[dict], seeds: list[int], sites: list[str]) -> None:
    cols = [*STRATEGIES, "pooled", "local-only (mean)"]
    print("### Unseen-site Harrell C (every patient of the held-out site) [bootstrap 95% CI]\n")
    print("| seed | held-out site | n | events | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for seed in seeds:
        for site in sites:
            fed = find(rows, seed=seed, held_out_site=site, method="federated")
            cells = [
                cell(find(rows, seed=seed, held_out_site=site, method="federated", strategy=s))
                for s in STRATEGIES
            ]
            cells += [
                cell(find(rows, seed=seed, held_out_site=site, method=m, strategy="FedAvg"))
                for m in ("pooled", "local-only (mean)")
            ]
            print(f"| {seed} | {site} | {fed['n']} | {fed['events']} | " + " | ".join(cells) + " |")
    print("\nMean over held-out sites and seeds:\n")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    means = []
    for c in cols:
        strat, method = (c, "federated") if c in STRATEGIES else ("FedAvg", c)
        vals = [r["c_index"] for r in rows if r["strategy"] == strat and r["method"] == method]
        means.append(f"{np.mean(vals):.3f}" if vals else "—")
    print("| " + " | ".join(means) + " |")


def print_personalised(rows: list[dict], seeds: list[int], sites: list[str]) -> None:
    print("\n### Personalisation on the unseen site (its validation part)\n")
    print(
        "The held-out site fine-tunes the federated model on its own training part (head: "
        "the output MLP, 100 steps; norm: its own input standardisation) and scores both on "
        "its validation part.\n"
    )
    print("| seed | held-out site | n | strategy | global | + head | + norm |")
    print("|---|---|---|---|---|---|---|")
    glob = "federated (unseen site's validation part)"
    deltas: dict[str, list[float]] = {"head": [], "norm": []}
    for seed in seeds:
        for site in sites:
            for s in STRATEGIES:
                kw = {"seed": seed, "held_out_site": site, "strategy": s}
                g = find(rows, method=glob, **kw)
                parts = {
                    p: find(rows, method=f"federated + personalised {p}", **kw) for p in deltas
                }
                for p, r in parts.items():
                    if r is not None and g is not None:
                        deltas[p].append(r["c_index"] - g["c_index"])
                n = g["n"] if g else "—"
                print(
                    f"| {seed} | {site} | {n} | {s} | {cell(g)} | {cell(parts['head'])} "
                    f"| {cell(parts['norm'])} |"
                )
    for p, d in deltas.items():
        if d:
            print(
                f"\nPersonalised {p} − global: mean {np.mean(d):+.3f}, range "
                f"[{min(d):+.3f}, {max(d):+.3f}] over {len(d)} (site, seed, strategy) cases."
            )


def sweep_server_lr(
    datasets: list[str], seeds: list[int], lrs: list[float], work: Path, **kw
) -> None:
    """FedAdam and FedYogi at each server learning rate: unseen-site C (every patient of the
    held-out site) and the federation's own validation C (within-site pairs), per dataset
    and mean over datasets, seeds and held-out sites; FedAvg beside them."""
    import json

    strategies = {"FedAvg": {}}
    for lr in lrs:
        strategies[f"FedAdam {lr:g}"] = {"aggregation": "fedadam", "server_lr": lr}
        strategies[f"FedYogi {lr:g}"] = {"aggregation": "fedyogi", "server_lr": lr}
    res: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for ds in datasets:
        for seed in seeds:
            rows, _ = run_seed(
                ds, seed, work / f"{ds}-{seed}", personalise=None, strategies=strategies, **kw
            )
            for r in rows:
                if r["method"] != "federated":
                    continue
                run = work / f"{ds}-{seed}" / r["strategy"] / f"held_out_{r['held_out_site']}"
                val = json.loads((run / "metrics.json").read_text())["federated_c_index"]
                res.setdefault((ds, r["strategy"]), []).append((r["c_index"], val))
    print("### Server learning rate of FedAdam / FedYogi\n")
    print(
        "Mean over seeds and held-out sites: unseen-site C / federation's validation C "
        "(within-site pairs of the training sites).\n"
    )
    print("| strategy | " + " | ".join(datasets) + " | mean unseen | mean validation |")
    print("|---|" + "---|" * (len(datasets) + 2))
    for name in strategies:
        cells, un, va = [], [], []
        for ds in datasets:
            v = res.get((ds, name), [])
            un += [a for a, _ in v]
            va += [b for _, b in v]
            cells.append(f"{np.mean([a for a, _ in v]):.3f} / {np.mean([b for _, b in v]):.3f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(un):.3f} | {np.mean(va):.3f} |")
    print(f"\n{len(seeds)} seed(s); per cell {len(res[(datasets[0], 'FedAvg')])} federation(s).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed")
    ap.add_argument("--dataset", default="gbsg2")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default 2; --quick 1)")
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    ap.add_argument(
        "--held-out", nargs="*", default=None, help="hold out only these sites (default: each)"
    )
    ap.add_argument(
        "--transport",
        choices=("inprocess", "flower"),
        default="inprocess",
        help="inprocess (default: no network, same coordinator and ClientApp) or flower "
        "(real SuperLink + SuperNode processes on 127.0.0.1)",
    )
    ap.add_argument(
        "--sweep-server-lr",
        nargs="*",
        type=float,
        default=None,
        help="instead: FedAdam/FedYogi at these server learning rates (e.g. 0.1 0.03 0.01), "
        "without baselines or personalisation, on --datasets",
    )
    ap.add_argument("--datasets", nargs="*", default=None, help="datasets of the sweep")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the runs here (a re-run skips the folds already evaluated); default: a "
        "temporary folder",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    if args.sweep_server_lr:
        with tempfile.TemporaryDirectory() as tmp:
            sweep_server_lr(
                args.datasets or [args.dataset],
                seeds,
                args.sweep_server_lr,
                Path(tmp),
                rounds=args.rounds,
                held_out=args.held_out,
                transport=args.transport,
            )
        return 0
    rows: list[dict] = []
    timing = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = args.work or tmp_dir
        for seed in seeds:
            r, sec = run_seed(
                args.dataset,
                seed,
                Path(tmp) / f"seed{seed}",
                rounds=args.rounds,
                held_out=args.held_out,
                transport=args.transport,
            )
            rows += r
            timing.append(sec)
    sites = sorted({r["held_out_site"] for r in rows})
    how = (
        "in-process (pathfl.fl.flower.inprocess: same coordinator and ClientApp, no network)"
        if args.transport == "inprocess"
        else "real SuperLink + SuperNode processes, TLS, on 127.0.0.1"
    )
    print(
        f"{args.dataset} in 3 sites (seeded case-mix rule), held out: {', '.join(sites)}; "
        f"{len(seeds)} seed(s), "
        f"{args.rounds} rounds, automatic local steps, default `pathfl train` model (abmil, "
        "Cox); FedProx mu = 0.01; FedAdam/FedYogi at pathfl's defaults. "
        f"Transport: {how}.\n"
    )
    print_tables(rows, seeds, sites)
    print_personalised(rows, seeds, sites)
    total = {s: sum(t[s] for t in timing) for s in STRATEGIES}
    print(
        "\nWall time per strategy (all held-out sites and seeds, incl. scoring): "
        + ", ".join(f"{s} {v:.0f} s" for s, v in total.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
