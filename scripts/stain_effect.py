"""Part 2 of ``bench_stain.py``: the effect of stain normalisation on the tiny demo cohort.

The cohort is generated and tiled once; each method's features are extracted once (through
the library's ``extract``, timed: tiles/s side by side); each seed then federates
(`pathfl fl simulate`, real processes) and trains the demo's pooled and local-only baselines,
all scored on the same validation patients by the demo's own evaluation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pathfl.demo.cohort import generate_cohort
from pathfl.demo.evaluate import evaluate_models
from pathfl.demo.pipeline import DemoConfig, DemoState, stage_federate, stage_tile
from pathfl.demo.sites import prepare_sites, read_csv
from pathfl.features.options import ExtractOptions
from pathfl.features.pipeline import extract
from pathfl.features.stain_ref import fit_reference, sample_tiles, save_reference

REF_SITE = "A"  # the reference is fitted on a sample of this site's tiles
REF_TILES = 64


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() and not dst.is_symlink():
        os.symlink(src.resolve(), dst)


def parse_method(spec: str) -> tuple[str, int]:
    """``"macenko+aug2"`` -> ``("macenko", 2)``: normalisation and HED-jitter copies per tile."""
    norm, _, aug = spec.partition("+aug")
    return norm, int(aug or 0)


def _features(root: Path, cohort: dict[str, Any], spec: str) -> tuple[Path, dict[str, Any]]:
    """Extract the cohort's tiles with ``spec`` (:func:`parse_method`) once: the folder and its
    timing are kept (``timing.json``), so a re-run or another seed reuses them."""
    tiles = root / "work" / "tiles"
    out = root / f"features_{spec}"
    done = out / "timing.json"
    if done.is_file():
        return out, json.loads(done.read_text())
    method, k_aug = parse_method(spec)
    ref_path, fit_s = None, 0.0
    if method != "none":
        site = cohort["sites"][REF_SITE]
        slides = [r["slide_id"] for r in read_csv(root / "cohort" / site["dir"] / "clinical.csv")]
        t0 = time.perf_counter()
        pixels, info = sample_tiles(tiles, slides=slides, n_tiles=REF_TILES, seed=0)
        ref_path = save_reference(fit_reference(pixels, method, fitted_on=info),
                                  root / f"ref_{method}.json")  # fmt: skip
        fit_s = time.perf_counter() - t0
    opts = ExtractOptions(
        stain_norm=method, stain_ref=ref_path, stain_augment=k_aug, workers=1, overwrite=True
    )
    t0 = time.perf_counter()
    rows = extract(tiles, out, options=opts)
    wall = time.perf_counter() - t0
    n = sum(r.n_tiles for r in rows if r.status == "ok")
    failed = [r.slide_id for r in rows if r.status == "failed"]
    if failed:
        raise RuntimeError(f"extract {spec}: {len(failed)} slide(s) failed: {failed[:3]}")
    timing = {"tiles": n, "wall_s": wall, "fit_s": fit_s}
    done.write_text(json.dumps(timing))
    return out, timing


def _score(root: Path, cohort: dict[str, Any], features: Path, method: str, seed: int) -> dict:
    cfg = DemoConfig(out=root / f"run_{method}_s{seed}", tiny=True, seed=seed, workers=1)
    _link(root / "cohort", cfg.cohort_dir)
    _link(features, cfg.work_dir / "features")
    state = DemoState(cfg, cohort=cohort)
    state.split = prepare_sites(cfg, cohort)
    done = cfg.out / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    stage_federate(state)
    ev = evaluate_models(cfg, state.split, state.fl_run, cohort).summary
    models = ev["models"]
    scores = {
        "federated": models["federated"]["c_index"],
        "pooled": models["pooled"]["c_index"],
        "local": ev["local_only_mean_c_index"],
        "n_val": ev["n_val_patients"],
        "wall_s": time.perf_counter() - t0,
    }
    done.write_text(json.dumps(scores))
    return scores


def run_effect(
    root: Path, *, methods: list[str], seeds: list[int], extract_only: bool = False
) -> list[str]:
    """Markdown lines: extraction throughput per method, then C-index per method and seed.
    Every extraction and every (method, seed) score is kept under ``root`` and reused by a
    re-run (``extract_only``: stop after the extractions)."""
    root.mkdir(parents=True, exist_ok=True)
    base = DemoConfig(out=root, tiny=True, seed=0, workers=2)
    state = DemoState(base)
    state.cohort = generate_cohort(base.cohort_dir, tiny=True, seed=0, workers=2)
    stage_tile(state)
    timing, scores = {}, {}
    for method in methods:
        _, timing[method] = _features(root, state.cohort, method)
    if extract_only:
        return _tables(methods, [], timing, {})
    for seed in seeds:  # seed-major: an interrupted run has every method at the first seeds
        for method in methods:
            features = root / f"features_{method}"
            scores[(method, seed)] = _score(root, state.cohort, features, method, seed)
    return _tables(methods, seeds, timing, scores)


def _tables(methods, seeds, timing, scores) -> list[str]:
    """Markdown: extraction throughput, then one C-index row per (method, seed) — cells not
    (yet) scored are said so — and mean ± sd over the seeds of fully scored methods."""
    t0 = timing[methods[0]]
    lines = [
        f"Extraction of the tiny demo's {t0['tiles']} tiles (224 px, MobileNetV2, CPU, 1 "
        "reading worker), one after the other in this run; reference fitted on "
        f"{REF_TILES} random tiles of site {REF_SITE} (fit time not included; `+augK`: K more "
        "encoder passes per tile):",
        "",
        "| stain norm | tiles | wall s | tiles/s | vs none | fit s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    none = timing.get("none")
    for m in methods:
        t = timing[m]
        r = t["tiles"] / t["wall_s"]
        rel = f"{r / (none['tiles'] / none['wall_s']):.2f}×" if none else "—"
        lines.append(
            f"| {m} | {t['tiles']} | {t['wall_s']:.1f} | {r:.2f} | {rel} | {t['fit_s']:.1f} |"
        )
    if not scores:
        return lines
    n_val = next(iter(scores.values()))["n_val"]
    lines += [
        "",
        f"C-index on {n_val} validation patients, the same for every method of a seed (demo "
        f"evaluation; seeds {', '.join(map(str, seeds))}: split and training seed, so each seed "
        "has its own validation patients; cohort seed 0):",
        "",
        "| stain norm | seed | federated C | pooled C | local-only mean C | cell wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        lines += _score_rows(m, seeds, scores)
    return lines


def _score_rows(method: str, seeds: list[int], scores: dict) -> list[str]:
    import numpy as np

    keys = ("federated", "pooled", "local")
    rows = []
    for s in seeds:
        c = scores.get((method, s))
        if c is None:
            rows.append(f"| {method} | {s} | not run | not run | not run | |")
            continue
        vals = " | ".join(f"{c[k]:.3f}" for k in keys)
        rows.append(f"| {method} | {s} | {vals} | {c.get('wall_s', float('nan')):.0f} |")
    done = [s for s in seeds if (method, s) in scores]
    if len(done) > 1:
        arr = {k: np.array([scores[(method, s)][k] for s in done]) for k in keys}
        cells = " | ".join(f"{arr[k].mean():.3f} ± {arr[k].std(ddof=1):.3f}" for k in keys)
        rows.append(f"| **{method}** | mean ± sd | {cells} | |")
    return rows


def collected(root: Path, *, methods: list[str], seeds: list[int]) -> list[str]:
    """The tables from what a (possibly interrupted) run left under ``root``."""
    timing = {
        m: json.loads((root / f"features_{m}" / "timing.json").read_text())
        for m in methods
        if (root / f"features_{m}" / "timing.json").is_file()
    }
    scores = {
        (m, s): json.loads((root / f"run_{m}_s{s}" / "scores.json").read_text())
        for m in timing
        for s in seeds
        if (root / f"run_{m}_s{s}" / "scores.json").is_file()
    }
    return _tables([m for m in methods if m in timing], seeds, timing, scores)
