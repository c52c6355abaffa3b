#!/usr/bin/env python
"""Run every ``scripts/bench_*.py`` and collect what they print into ``BENCHMARKS.md``.

What `make bench` runs. Each benchmark prints Markdown (tables + notes) on stdout; this script
runs them one after the other (``--quick`` where the script has that flag, unless ``--full``),
and writes BENCHMARKS.md with the machine, the date, the git commit, the exact command, wall
time and the load average before/after every benchmark (on a shared machine the figures are
only as good as the load says). ``--demo`` also times the whole `pathfl demo`.

    python scripts/run_benchmarks.py                 # quick variants, all benchmarks
    python scripts/run_benchmarks.py --full --demo   # full sizes + the full demo
    python scripts/run_benchmarks.py --only tile fl  # re-run a subset, keep the other sections
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pathfl.io import write_text_atomic  # noqa: E402


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        m = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = m.group(1).strip() if m else cpu
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        m = re.search(r"MemTotal:\s*(\d+) kB", meminfo.read_text())
        mem = f", {int(m.group(1)) / 2**20:.0f} GiB RAM" if m else ""
    try:
        import torch

        tv = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch.cuda.is_available():
            tv += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        tv = "torch not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = "?"
    return [
        f"- Machine: {platform.node()} — {cpu}, {os.cpu_count()} logical cores{mem}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}; {tv}",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; git commit {commit or '?'}",
    ]


def load_avg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def has_flag(script: Path, flag: str) -> bool:
    return flag in script.read_text()


def run_one(cmd: list[str], *, timeout_s: float, log_dir: Path, name: str) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    before, t0 = load_avg(), time.perf_counter()
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    try:
        p = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = (
            124,
            (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""),
        )
        err = f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - t0
    (log_dir / f"{name}.stdout.txt").write_text(out)
    (log_dir / f"{name}.stderr.txt").write_text(err)
    return {
        "rc": rc,
        "stdout": out,
        "stderr": err,
        "wall_s": wall,
        "load_before": before,
        "load_after": load_avg(),
    }


def demo_section(out_dir: Path) -> str:
    report = out_dir / "report.md"
    text = ""
    if report.is_file():
        r = report.read_text()
        for head in ("## Pipeline", "## Prognostic performance"):
            if head in r:
                part = r.split(head, 1)[1].split("\n## ", 1)[0]
                text += f"{head.replace('##', '###')}{part}\n"
    return text or "_(no report written)_\n"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="no --quick flags (full sizes)")
    ap.add_argument("--demo", action="store_true", help="also time `pathfl demo` (full cohort)")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="re-run only these (e.g. tile extract); other sections are kept",
    )
    ap.add_argument(
        "--demo-from",
        type=Path,
        default=None,
        help="add the tables of an existing `pathfl demo --out DIR` report",
    )
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    ap.add_argument("--log-dir", type=Path, default=REPO / "bench_out" / "logs")
    return ap.parse_args()


def bench_section(script: Path, args: argparse.Namespace) -> tuple[str, bool]:
    """Run one ``bench_*.py`` script; returns its BENCHMARKS.md section and whether it passed."""
    name = script.stem.removeprefix("bench_")
    cmd = [sys.executable, str(script.relative_to(REPO))]
    if not args.full and has_flag(script, '"--quick"'):
        cmd.append("--quick")
    print(f"running {' '.join(cmd)} …", file=sys.stderr, flush=True)
    res = run_one(cmd, timeout_s=args.timeout, log_dir=args.log_dir, name=name)
    shown = " ".join(shlex.quote(c) for c in [Path(cmd[0]).name, *cmd[1:]])
    body = [
        f"`{shown}` — run {stamp()}, {res['wall_s']:.0f} s wall, load average "
        f"{res['load_before']} before, {res['load_after']} after (1/5/15 min)",
        "",
    ]
    if res["rc"] == 0:
        body.append(res["stdout"].strip() or "_(printed nothing)_")
        return "\n".join(body), True
    lines = res["stderr"].strip().splitlines()[-12:]
    body += [
        f"**Failed (exit code {res['rc']})**; last lines of stderr:",
        "",
        "```",
        *(ln if len(ln) < 300 else ln[:300] + " …" for ln in lines),
        "```",
    ]
    if res["stdout"].strip():  # rows a benchmark printed before it failed still count
        body += ["", "What it printed before that:", "", res["stdout"].strip()]
    return "\n".join(body), False


def demo_run_section(args: argparse.Namespace) -> tuple[str, bool]:
    """Time the whole `pathfl demo` from scratch; returns its section and whether it passed."""
    out_dir = REPO / "bench_out" / "demo"
    shutil.rmtree(out_dir, ignore_errors=True)  # a rerun would reuse earlier stages
    cmd = [sys.executable, "-m", "pathfl", "demo", "--out", str(out_dir)]
    print("running pathfl demo …", file=sys.stderr, flush=True)
    res = run_one(cmd, timeout_s=args.timeout, log_dir=args.log_dir, name="demo")
    text = (
        f"`pathfl demo --out bench_out/demo` — run {stamp()}, {res['wall_s']:.0f} s wall "
        f"(exit code {res['rc']}), load average {res['load_before']} before, "
        f"{res['load_after']} after\n\n" + demo_section(out_dir)
    )
    return text, res["rc"] == 0


def write_report(path: Path, sections: dict[str, str]) -> None:
    parts = [
        "# Benchmarks",
        "",
        "Written by `scripts/run_benchmarks.py` (`make bench`); every figure below was "
        "printed by the command shown above it, on this machine:",
        "",
        *machine_info(),
        "",
        "**Caveat:** when the load average is well above the number of cores, the machine "
        "was shared with other work while the benchmark ran, and throughput figures are "
        "lower (and wall times higher) than on an idle machine.",
        "",
    ]
    for name in sorted(sections, key=lambda n: (n == "demo", n)):
        parts += [f"## {name}", "", sections[name].strip(), ""]
    write_text_atomic(path, "\n".join(parts).rstrip() + "\n")


def main() -> int:
    args = parse_args()
    scripts = sorted((REPO / "scripts").glob("bench_*.py"))
    if args.only is not None:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    # with --only / --demo-from, sections of an earlier BENCHMARKS.md that are not re-run stay
    sections = read_sections(args.out) if args.only is not None else {}
    failures = 0
    for script in scripts:
        sections[script.stem.removeprefix("bench_")], ok = bench_section(script, args)
        failures += not ok
    if args.demo:
        sections["demo"], ok = demo_run_section(args)
        failures += not ok
    if args.demo_from is not None:
        sections["demo"] = (
            f"From an earlier `pathfl demo --out {args.demo_from}` (its report's tables; the "
            "per-stage load average shows how shared the machine was):\n\n"
            + demo_section(args.demo_from)
        )
    write_report(args.out, sections)
    print(f"wrote {args.out} ({failures} failure(s))", file=sys.stderr)
    return 1 if failures else 0


def stamp() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"


def read_sections(path: Path) -> dict[str, str]:
    """``## name`` sections of an earlier BENCHMARKS.md (the header is rewritten)."""
    if not path.is_file():
        return {}
    out = {}
    for chunk in path.read_text().split("\n## ")[1:]:
        name, _, body = chunk.partition("\n")
        lines = (ln if len(ln) <= 400 else ln[:300] + " …" for ln in body.strip().splitlines())
        out[name.strip()] = "\n".join(lines)
    return out


if __name__ == "__main__":
    sys.exit(main())
