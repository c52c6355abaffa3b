"""Cheap structural check of TIFF-based slides (svs, tif, tiff, bif, scn): every IFD and every
tile/strip of every page must lie inside the file. Catches truncated copies and downloads,
which readers may otherwise open and silently read in part (missing levels, black tiles)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np

from pathfl.slide.errors import SlideError

logger = logging.getLogger(__name__)

#: classic/BigTIFF files with standard offsets (NDPI uses 64-bit offset hacks: not checked)
TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".bif", ".scn")
_MAX_IFDS = 100_000


def _ifd_chain(path: Path, size: int) -> list[int]:
    """Offsets of the top-level IFDs; raises SlideError when the chain leaves the file."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return []  # not a TIFF: the readers will say so
        e = "<" if head[:2] == b"II" else ">"
        (magic,) = struct.unpack(e + "H", head[2:4])
        if magic == 42:
            (off,) = struct.unpack(e + "I", head[4:8])
            count_fmt, count_size, entry_size, off_fmt, off_size = "H", 2, 12, "I", 4
        elif magic == 43:
            (off,) = struct.unpack(e + "Q", head[8:16])
            count_fmt, count_size, entry_size, off_fmt, off_size = "Q", 8, 20, "Q", 8
        else:
            return []
        offsets: list[int] = []
        while off and len(offsets) < _MAX_IFDS:
            if off + count_size > size:
                raise SlideError(
                    f"{path}: file is truncated or corrupt: image directory {len(offsets)} "
                    f"at byte {off} lies beyond the end of the file ({size} bytes)"
                )
            f.seek(off)
            (n,) = struct.unpack(e + count_fmt, f.read(count_size))
            end = off + count_size + n * entry_size + off_size
            if end > size:
                raise SlideError(
                    f"{path}: file is truncated or corrupt: image directory {len(offsets)} "
                    f"ends at byte {end}, beyond the end of the file ({size} bytes)"
                )
            offsets.append(off)
            f.seek(off + count_size + n * entry_size)
            (off,) = struct.unpack(e + off_fmt, f.read(off_size))
    return offsets


def check_tiff_integrity(path: str | Path) -> None:
    """Raise :class:`SlideError` if a TIFF-based slide is visibly truncated or corrupt."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return
    size = path.stat().st_size
    if not _ifd_chain(path, size):
        return
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            for i, page in enumerate(tf.pages):
                offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.int64)
                counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.int64)
                if offsets.size and counts.size == offsets.size:
                    end = int((offsets + counts).max())
                    if end > size:
                        raise SlideError(
                            f"{path}: file is truncated or corrupt: image data of page {i} "
                            f"ends at byte {end}, beyond the end of the file ({size} bytes)"
                        )
    except SlideError:
        raise
    except Exception as e:  # tifffile parsing problems: leave the verdict to the readers
        logger.debug("%s: integrity check skipped: %s", path, e)
