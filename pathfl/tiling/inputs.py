"""Which slides to tile: files and folders from the command line, and/or a slides CSV with
``slide_id,path[,mpp]`` (a per-slide mpp override for slides with missing or wrong metadata)."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pathfl.config import ConfigError
from pathfl.slide.base import slide_id_from_path
from pathfl.tiling.pipeline import SlideJob

#: extensions picked up when a folder is given
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".bif",
    ".svslide",
)
#: a DICOM WSI is a folder of files (one per pyramid level, plus label/overview images)
DICOM_EXTENSION = ".dcm"


def _scan(folder: Path, recursive: bool) -> list[Path]:
    """Slide files in ``folder``; each folder holding ``.dcm`` files counts as one DICOM slide,
    represented by its largest ``.dcm`` file (the full-resolution level; OpenSlide finds the
    rest of the series in the same folder)."""
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")]
    found = [p for p in files if p.suffix.lower() in SLIDE_EXTENSIONS]
    dicom: dict[Path, list[Path]] = {}
    for p in files:
        if p.suffix.lower() == DICOM_EXTENSION:
            dicom.setdefault(p.parent, []).append(p)
    found += [max(group, key=lambda q: (q.stat().st_size, q.name)) for group in dicom.values()]
    return sorted(found)


def _parse_mpp(value: str, where: str) -> float | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        raise ConfigError(f"{where}: mpp {value!r} is not a number") from None
    return check_mpp(mpp, where)


def check_mpp(mpp: float, where: str) -> float:
    """``mpp`` if it is a positive finite number, else a :class:`ConfigError` naming
    ``where`` (a usage error: nothing is written)."""
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(f"{where}: mpp must be > 0 (µm/px, a finite number), got {mpp:g}")
    return mpp


def read_slides_csv(path: str | os.PathLike[str]) -> list[SlideJob]:
    """Rows ``slide_id,path,mpp`` (mpp optional/blank). Relative paths are relative to the
    CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: slides CSV not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        missing = {"slide_id", "path"} - cols
        if missing:
            raise ConfigError(
                f"{path}: missing column(s) {sorted(missing)}; expected slide_id,path[,mpp]"
            )
        jobs = []
        for i, row in enumerate(reader, start=2):
            sid, p = (row.get("slide_id") or "").strip(), (row.get("path") or "").strip()
            if not sid or not p:
                raise ConfigError(f"{path}:{i}: empty slide_id or path")
            sp = Path(p) if Path(p).is_absolute() else path.parent.absolute() / p
            jobs.append(SlideJob(sid, sp, _parse_mpp(row.get("mpp", ""), f"{path}:{i}")))
    return jobs


def collect_jobs(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    slides_csv: str | os.PathLike[str] | None = None,
    mpp_override: float | None = None,
    recursive: bool = False,
) -> list[SlideJob]:
    """Slides from files/folders plus the CSV. ``mpp_override`` applies to every slide that
    the CSV gives no mpp for. Missing paths, duplicate slide ids and an mpp that is not a
    positive number are usage errors."""
    if mpp_override is not None:
        check_mpp(float(mpp_override), "--mpp-override")
    jobs: list[SlideJob] = []
    for item in inputs:
        p = Path(item).absolute()
        if p.is_dir():
            found = _scan(p, recursive)
            if not found:
                exts = ", ".join((*SLIDE_EXTENSIONS, DICOM_EXTENSION))
                hint = "" if recursive else "; slides in subfolders (e.g. DICOM): add --recursive"
                raise ConfigError(f"{p}: folder contains no slide files ({exts}){hint}")
            jobs += [SlideJob(slide_id_from_path(f), f, mpp_override) for f in found]
        elif p.exists():
            jobs.append(SlideJob(slide_id_from_path(p), p, mpp_override))
        else:
            raise ConfigError(f"{p}: no such file or folder")
    if slides_csv is not None:
        for j in read_slides_csv(slides_csv):
            mpp = j.mpp_override if j.mpp_override is not None else mpp_override
            jobs.append(SlideJob(j.slide_id, j.path, mpp))
    if not jobs:
        raise ConfigError("no slides given (pass files/folders or --slides-csv)")
    dup = [sid for sid, n in Counter(j.slide_id for j in jobs).items() if n > 1]
    if dup:
        raise ConfigError(
            f"duplicate slide id(s) {sorted(dup)[:10]}: slide ids are output file names; "
            "give unique ids with --slides-csv"
        )
    return jobs
