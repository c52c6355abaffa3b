"""Lay the extracted cohort out as three hospital folders for `pathfl fl simulate`, keeping a
held-out test set of patients at every site that no model sees during training.

``work/sites/site_X/`` = ``features/`` (links to this site's feature files only) +
``clinical.csv`` (the site's *training* patients); ``work/test/clinical.csv`` = the held-out
patients of every site (with their ``site``)."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def split_patients(
    rows: list[dict[str, str]], *, test_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Patient-level split stratified by event: about ``test_fraction`` of the patients with
    an event and of those without go to the test set. Returns (train ids, test ids)."""
    event_of: dict[str, int] = {}
    for r in rows:
        event_of[r["patient_id"]] = int(r["event"])
    rng = np.random.default_rng(seed)
    train, test = [], []
    for ev in (0, 1):
        ids = sorted(p for p, e in event_of.items() if e == ev)
        rng.shuffle(ids)
        n_test = round(len(ids) * test_fraction)
        test += ids[:n_test]
        train += ids[n_test:]
    return sorted(train), sorted(test)


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(os.path.relpath(src, dst.parent), dst)
    except OSError:  # filesystems without symlinks
        shutil.copy2(src, dst)


def prepare_sites(config: Any, cohort: dict[str, Any]) -> dict[str, Any]:
    """Write the site folders and the test table; return a summary (also ``split.json``)."""
    features = config.work_dir / "features" / "features"
    out_sites = config.work_dir / "sites"
    test_rows: list[dict[str, str]] = []
    summary: dict[str, Any] = {"sites": {}, "site_dirs": [], "missing_features": []}
    columns = ["patient_id", "slide_id", "time", "event", "site"]
    for si, (name, s) in enumerate(sorted(cohort["sites"].items())):
        rows = read_csv(config.cohort_dir / s["dir"] / "clinical.csv")
        have = {r["slide_id"] for r in rows if (features / f"{r['slide_id']}.h5").is_file()}
        missing = sorted({r["slide_id"] for r in rows} - have)
        if missing:  # a patient is usable only if every slide has features
            log.warning(
                "site %s: %d slide(s) without features, their patients are left out: %s",
                name,
                len(missing),
                ", ".join(missing[:5]),
            )
            summary["missing_features"] += missing
            bad = {r["patient_id"] for r in rows if r["slide_id"] in missing}
            rows = [r for r in rows if r["patient_id"] not in bad]
        train, test = split_patients(
            rows, test_fraction=config.test_fraction, seed=config.seed * 1000 + si
        )
        site_dir = out_sites / f"site_{name}"
        (site_dir / "features").mkdir(parents=True, exist_ok=True)
        for old in (site_dir / "features").glob("*.h5"):
            old.unlink()
        train_set = set(train)
        train_rows = [r for r in rows if r["patient_id"] in train_set]
        for r in train_rows:
            _link(features / f"{r['slide_id']}.h5", site_dir / "features" / f"{r['slide_id']}.h5")
        write_csv(site_dir / "clinical.csv", train_rows, columns)
        test_rows += [r for r in rows if r["patient_id"] not in train_set]
        summary["site_dirs"].append(str(site_dir))
        summary["sites"][name] = {
            "dir": str(site_dir),
            "n_train": len(train),
            "n_test": len(test),
            "train_events": sum(int(r["event"]) for r in _per_patient(train_rows)),
            "test_events": sum(
                int(r["event"])
                for r in _per_patient([r for r in rows if r["patient_id"] not in train_set])
            ),
        }
    test_csv = config.work_dir / "test" / "clinical.csv"
    write_csv(test_csv, test_rows, columns)
    summary["test_clinical"] = str(test_csv)
    summary["features_dir"] = str(features)
    write_json_atomic(config.work_dir / "split.json", summary)
    return summary


def _per_patient(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for r in rows:
        seen.setdefault(r["patient_id"], r)
    return list(seen.values())
