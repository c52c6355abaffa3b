"""Lay the extracted cohort out as three hospital folders for `pathfl fl simulate`:
``work/sites/site_X/`` = ``features/`` (links to this site's feature files only) +
``clinical.csv``. Each site keeps its own validation part inside `pathfl fl simulate`
(``val_folds``), which is where every model is scored."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any

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


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(os.path.relpath(src, dst.parent), dst)
    except OSError:  # filesystems without symlinks
        shutil.copy2(src, dst)


def prepare_sites(config: Any, cohort: dict[str, Any]) -> dict[str, Any]:
    """Write the site folders; return a summary (also ``work/sites.json``). A patient is
    left out (and listed) when one of their slides has no features."""
    features = config.work_dir / "features" / "features"
    summary: dict[str, Any] = {
        "sites": {},
        "site_dirs": [],
        "missing_features": [],
        "features_dir": str(features),
    }
    columns = ["patient_id", "slide_id", "time", "event", "site"]
    for name, s in sorted(cohort["sites"].items()):
        rows = read_csv(config.cohort_dir / s["dir"] / "clinical.csv")
        have = {r["slide_id"] for r in rows if (features / f"{r['slide_id']}.h5").is_file()}
        missing = sorted({r["slide_id"] for r in rows} - have)
        if missing:
            log.warning(
                "site %s: %d slide(s) without features, their patients are left out: %s",
                name,
                len(missing),
                ", ".join(missing[:5]),
            )
            summary["missing_features"] += missing
            bad = {r["patient_id"] for r in rows if r["slide_id"] in missing}
            rows = [r for r in rows if r["patient_id"] not in bad]
        site_dir = config.work_dir / "sites" / f"site_{name}"
        (site_dir / "features").mkdir(parents=True, exist_ok=True)
        for old in (site_dir / "features").glob("*.h5"):
            old.unlink()
        for r in rows:
            _link(features / f"{r['slide_id']}.h5", site_dir / "features" / f"{r['slide_id']}.h5")
        write_csv(site_dir / "clinical.csv", rows, columns)
        summary["site_dirs"].append(str(site_dir))
        patients = {r["patient_id"]: int(r["event"]) for r in rows}
        summary["sites"][name] = {
            "dir": str(site_dir),
            "n_patients": len(patients),
            "n_events": sum(patients.values()),
            "n_slides": len(rows),
        }
    write_json_atomic(config.work_dir / "sites.json", summary)
    return summary
