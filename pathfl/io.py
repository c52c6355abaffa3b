"""File helpers shared by every stage: atomic writes, per-batch manifests, hashing."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_COLUMNS = ("slide_id", "path", "status", "n_tiles", "mpp", "seconds", "error")
STATUSES = ("ok", "failed", "skipped")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block
    completes. On any exception the temporary file is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=(suffix or final.suffix) + ".tmp", dir=final.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the final file the usual umask-based mode
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_stale_temps(*finals: str | os.PathLike[str]) -> int:
    """Delete the temporary files killed processes left for ``finals`` (the
    ``.<name>.<random><suffix>.tmp`` files of :func:`atomic_path`), listing each folder once;
    returns how many. Call it only where no other process writes those files at the time."""
    names_by_dir: dict[Path, set[str]] = {}
    for final in map(Path, finals):
        names_by_dir.setdefault(final.parent, set()).add(final.name)
    n = 0
    for folder, names in names_by_dir.items():
        for tmp in folder.glob(".*.tmp"):
            stem = tmp.name[1:]  # "<name>.<random><suffix>.tmp": some dot ends <name>
            dots = [k for k, ch in enumerate(stem) if ch == "."]
            if any(stem[:k] in names for k in dots):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    n += 1
    return n


#: infixes of the sibling folders :func:`atomic_dir` builds in and moves the old folder to
_PARTIAL, _REPLACED = ".partial-", ".replaced-"


def dir_has_files(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` exists and is not an empty folder (a file counts as content)."""
    path = Path(path)
    if not path.exists():
        return False
    return not path.is_dir() or any(path.iterdir())


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty folder beside ``final`` to build a whole directory in; when the block
    completes, it replaces ``final`` (an existing folder is moved aside first and deleted only
    once the new one is in place). On any exception (Ctrl-C included) the partial folder is
    removed and ``final`` is untouched. Partial folders a killed process left behind for
    ``final`` are removed first (and an old ``final`` it had moved aside is put back). The
    caller decides whether replacing is allowed."""
    import shutil

    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(final.parent.glob(f".{final.name}.*")):
        if not stale.is_dir() or not (_PARTIAL in stale.name or _REPLACED in stale.name):
            continue
        kept = stale / final.name
        if _REPLACED in stale.name and kept.exists() and not final.exists():
            os.replace(kept, final)  # killed between the two renames: the old one comes back
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{_PARTIAL}", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}{_REPLACED}", dir=final.parent))
        os.replace(final, old / final.name)  # same file system: a rename
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


@dataclass
class ManifestRow:
    slide_id: str
    path: str
    status: str
    n_tiles: int = 0
    mpp: float | None = None
    seconds: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"manifest status must be one of {STATUSES}, got {self.status!r}")

    def as_dict(self) -> dict[str, str]:
        return {
            "slide_id": self.slide_id,
            # absolute in every stage's manifest (tile: the slide, extract: the features
            # file), so a manifest means the same whatever folder the command ran in
            "path": os.path.abspath(self.path) if self.path else "",
            "status": self.status,
            "n_tiles": str(int(self.n_tiles)),
            "mpp": "" if self.mpp is None else f"{self.mpp:.6g}",
            "seconds": f"{self.seconds:.3f}",
            "error": " ".join(str(self.error).split()),  # one line per slide
        }


@dataclass
class Manifest:
    """``OUT/manifest.csv``: one row per slide, rewritten atomically as each slide finishes,
    so an interrupted batch shows what is done. Rows of earlier runs are kept unless the same
    slide_id is processed again."""

    path: Path
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        path = Path(path)
        m = cls(path=path)
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("slide_id"):
                        m.rows[row["slide_id"]] = {
                            k: row.get(k, "") or "" for k in MANIFEST_COLUMNS
                        }
        return m

    def update(self, row: ManifestRow) -> None:
        with self._lock:
            self.rows[row.slide_id] = row.as_dict()
            self._flush()

    def _flush(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            w.writeheader()
            for sid in sorted(self.rows):
                w.writerow(self.rows[sid])

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.rows.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts
