"""Benchmark of pathfl's federation on one machine (real Flower processes on 127.0.0.1).

For 3 synthetic sites it measures, per round: wall time, the slowest site's ClientApp handler
time and the engine overhead (= round wall time - slowest handler time: message transport,
polling, process start-up), the lifetime of the per-message ``flwr-clientapp`` processes (sampled
from /proc), plus bytes sent per site per round (model arrays up, global model down) — with
Flower's defaults (fresh ``flwr-clientapp`` process per message loading torch and the data
itself, SuperNode idle poll 3 s, SuperExec task poll 1 s, server pull every 3 s as
``Grid.send_and_receive`` does), with pathfl's previous settings (long-running site worker,
SuperNode poll 0.5 s and reply wait 0.5 s, Flower's ``flwr-clientapp`` script, SuperExec poll
0.2 s, server pull 0.2 s) and with pathfl's settings now (reply wait 0.05 s and the lean
ClientApp start of ``pathfl.fl.flower.fast_clientapp``). Pooled training on the union of the
sites' training parts with the same total number of epochs is timed before and after the
federations (one torch thread, as each site worker); "rounds wall / pooled" is the sum of the
round wall times (training + the per-round validation) over that.

A second, pathfl-only run (``--large-epochs``, 0 = skip) keeps the 3 rounds and the engine but
gives each round more training (768-d features, 1,000–2,000 tiles per bag, 10 local epochs):
the engine's cost per round stays, its share of the wall shrinks — what a cohort of real
foundation-model features sees. Its pooled training is timed the same way.

    .venv/bin/python scripts/bench_fl.py --out bench_out/fl [--rounds 3] [--patients 120]

Writes OUT/bench_fl.json and prints a Markdown table. No timing is asserted anywhere; report
the load average next to the numbers (printed) — on a shared machine they vary a lot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

from pathfl.fl.flower.lifetime import ENV_PARENT_PID
from pathfl.fl.flower.simulate import simulate, site_specs

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")


def make_sites(
    root: Path,
    *,
    n_patients: int,
    n_sites: int = 3,
    feature_dim: int = 32,
    tiles: tuple[int, int] = (20, 60),
) -> list[Path]:
    from pathfl.survival.synthetic import make_cohort, split_into_sites

    cohort = make_cohort(
        root / "all",
        n_patients=n_patients,
        feature_dim=feature_dim,
        tiles=tiles,
        seed=0,
        two_slide_fraction=0.0,
        effect=3.0,
        signal_shift=2.0,
    )
    return split_into_sites(cohort, root, [f"site_{k}" for k in range(n_sites)])


# mode -> (environment, server pull interval s, site worker, pathfl's SuperNode entry point)
MODES = {
    "flower-defaults": ({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}, 3.0, False, False),
    # pathfl before the lean ClientApp start and the short SuperNode reply wait (2026-12-01)
    "pathfl-previous": (
        {
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
            "PATHFL_SUPERNODE_WAIT_S": "0.5",
            "PATHFL_FULL_CLIENTAPP": "1",
        },
        0.2,
        True,
        True,
    ),
    "pathfl": ({}, 0.2, True, True),
}


class ProcTrace:
    """Samples /proc every ``every_s`` in a thread: the lifetime (start from /proc/PID/stat,
    end = last seen) of every ClientApp process (command line with ``clientapp`` and
    ``--token``) started below this process (its environment names this process as the pathfl
    parent: other jobs' federations on the machine do not count)."""

    def __init__(self, every_s: float = 0.02) -> None:
        import threading

        self.every_s = every_s
        self.seen: dict[int, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._tag = f"{ENV_PARENT_PID}={os.getpid()}".encode()
        self._boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    cmd = (d / "cmdline").read_bytes()
                    if b"clientapp" not in cmd or b"--token" not in cmd:
                        continue
                    if self._tag not in (d / "environ").read_bytes().split(b"\0"):
                        continue
                    stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                start = self._boot + int(stat[19]) / self._tick
                self.seen.setdefault(int(d.name), [start, start])[1] = time.time()
            self._stop.wait(self.every_s)

    def __enter__(self) -> ProcTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def lifetimes(self) -> list[float]:
        return [end - start for start, end in self.seen.values()]


def run_mode(name: str, dirs: list[Path], cfg: dict, out: Path) -> dict:
    env, pull_s, worker, fast = MODES[name]
    cfg = {**cfg, "poll_interval_s": pull_s}
    t0 = time.perf_counter()
    with ProcTrace() as trace:
        summary = simulate(
            site_specs(dirs),
            cfg,
            out / name,
            tls=True,
            baselines=False,
            env_extra=env,
            use_worker=worker,
            fast_poll=fast,
        )
    total = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / name / "rounds.jsonl").read_text().splitlines()]
    per_round = [
        {
            "round": r["round"],
            "wall_s": r["seconds"],
            "slowest_handler_s": r["max_site_compute_s"],
            "overhead_s": r["seconds"] - r["max_site_compute_s"],
            "bytes_up_per_site": {k: v["bytes_up"] for k, v in r["sites"].items()},
            "bytes_down_per_site": r["bytes_down_per_site"],
        }
        for r in rows
    ]
    later = per_round[1:] or per_round  # round 1 includes loading data and first imports
    lives = trace.lifetimes()
    return {
        "mode": name,
        "total_s": total,
        "federated_c_index": summary["federated_c_index"],
        "rounds": per_round,
        "sum_round_wall_s": sum(r["wall_s"] for r in per_round),
        "median_round_wall_s": statistics.median(r["wall_s"] for r in later),
        "median_overhead_s": statistics.median(r["overhead_s"] for r in later),
        "median_handler_s": statistics.median(r["slowest_handler_s"] for r in later),
        "clientapp_processes": len(lives),
        "median_clientapp_process_s": statistics.median(lives) if lives else None,
    }


def pooled_time(dirs: list[Path], cfg: dict) -> float:
    import numpy as np

    from pathfl.fl.baselines import load_sites
    from pathfl.fl.fl_config import effective_config
    from pathfl.fl.site import train_config
    from pathfl.survival.train import build_model, fit_time_bins, train_local

    full = effective_config({**cfg, "time_grid_max": 100.0})
    sites = load_sites(site_specs(dirs), full)
    bags = [b for s in sites for b in s.train]
    bins = fit_time_bins([b.time for b in bags], [b.event for b in bags], n_bins=4)
    model = build_model(train_config(full), feature_dim=sites[0].feature_dim)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every site worker (OMP_NUM_THREADS=1): same compute per step
    t0 = time.perf_counter()
    train_local(
        model,
        bags,
        train_config(full),
        epochs=int(full["rounds"]) * int(full["local_epochs"]),
        time_bins=np.asarray(bins),
        seed=0,
    )
    seconds = time.perf_counter() - t0
    torch.set_num_threads(threads)
    return seconds


def measure(dirs: list[Path], cfg: dict, modes: list[str], out: Path) -> dict:
    """The federations of ``modes`` between two pooled trainings with the same epochs."""
    pooled = [pooled_time(dirs, cfg)]  # before and after the federations: load drifts
    runs = [run_mode(mode, dirs, cfg, out) for mode in modes]
    pooled.append(pooled_time(dirs, cfg))
    for m in runs:
        m["federated_over_pooled"] = m["sum_round_wall_s"] / statistics.mean(pooled)
    return {
        "config": cfg,
        "modes": runs,
        "pooled_train_s_same_epochs": statistics.mean(pooled),
        "pooled_train_s_runs": pooled,
    }


def print_rows(label: str, part: dict) -> None:
    for m in part["modes"]:
        up = next(iter(m["rounds"][0]["bytes_up_per_site"].values()))
        life = m["median_clientapp_process_s"]
        print(
            f"| {label}{m['mode']} | {m['total_s']:.1f} | {m['sum_round_wall_s']:.1f} | "
            f"{m['federated_over_pooled']:.1f}x | {m['median_round_wall_s']:.1f} | "
            f"{m['median_overhead_s']:.1f} | {m['median_handler_s']:.2f} | "
            f"{life if life is None else round(life, 1)} ({m['clientapp_processes']}) | "
            f"{up} | {m['rounds'][0]['bytes_down_per_site']} | {m['federated_c_index']:.3f} |"
        )


def pooled_line(label: str, part: dict) -> str:
    cfg = part["config"]
    runs = ", ".join(f"{x:.2f}" for x in part["pooled_train_s_runs"])
    return (
        f"{label}pooled training, same total epochs ({cfg['rounds'] * cfg['local_epochs']}): "
        f"{part['pooled_train_s_same_epochs']:.2f} s (one torch thread, as each site worker; "
        f"runs before/after: {runs})"
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/fl"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--modes", default="flower-defaults,pathfl-previous,pathfl")
    ap.add_argument(
        "--large-epochs",
        type=int,
        default=10,
        help="local epochs of the extra pathfl run on larger bags (0 = skip it)",
    )
    ap.add_argument("--large-feature-dim", type=int, default=768)
    ap.add_argument("--large-tiles", type=int, nargs=2, default=(1000, 2000))
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dirs = make_sites(args.out / "data", n_patients=args.patients)
    cfg = {
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "model": "abmil",
        "lr": 0.001,
        "min_sites": 3,
        "round_timeout_s": 900,
        "connect_timeout_s": 300,
        "linear_cox": False,  # after the rounds: not part of the per-round figures
    }
    result = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count()}
    result.update(measure(dirs, cfg, args.modes.split(","), args.out))
    large_label = ""
    if args.large_epochs > 0:
        lo, hi = args.large_tiles
        big = make_sites(
            args.out / "data_large",
            n_patients=args.patients,
            feature_dim=args.large_feature_dim,
            tiles=(lo, hi),
        )
        large_cfg = {**cfg, "local_epochs": args.large_epochs}
        result["large"] = measure(big, large_cfg, ["pathfl"], args.out / "large")
        large_label = (
            f"larger bags ({args.large_feature_dim}-d, {lo}-{hi} tiles, "
            f"{args.large_epochs} local epochs): "
        )
    result["load_avg_end"] = os.getloadavg()
    (args.out / "bench_fl.json").write_text(json.dumps(result, indent=2))
    print(
        f"load average start {result['load_avg_start']}, end {result['load_avg_end']}, "
        f"{result['cpus']} CPUs"
    )
    print(
        "| mode | total s | rounds wall s | rounds wall / pooled | median round s (rounds 2..) "
        "| median engine overhead s | median slowest handler s | median ClientApp process s "
        "| bytes up/site/round | bytes down/site/round | fed. C-index |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print_rows("", result)
    if "large" in result:
        print_rows(large_label, result["large"])
    print(pooled_line("", result))
    if "large" in result:
        print(pooled_line(large_label, result["large"]))
    print(
        f"(a speed benchmark: {args.rounds} rounds x {args.local_epochs} local epoch(s) on "
        f"{args.patients} patients is a deliberately small budget, so its fed. C-index says "
        "nothing about quality; model quality is in the learning and unseen_site sections. "
        "The larger-bags row keeps the rounds and the engine and gives each round more "
        "training: the engine's cost per round is the same, its share of the wall smaller)"
    )


if __name__ == "__main__":
    main()
