"""The coordinates file ``OUT/coords/<slide_id>.h5`` (see DESIGN.md): schema, writer, reader.

Dataset ``coords`` int64 (N, 2) level-0 top-left (x, y); dataset ``tissue_fraction`` float32
(N,); attributes are the union of the CLAM and TRIDENT conventions plus pathfl's own, so
``f['coords'][:]``, ``f['coords'].attrs['patch_size']`` / ``['patch_level']`` (CLAM puts them
on the dataset) and ``f.attrs[...]`` (file level) all work. The attribute values themselves are
made by :func:`pathfl.tiling.coords.build_attrs`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from pathfl.formats.hdf5 import FormatFileError, open_for_reading, plain, plain_attrs
from pathfl.io import atomic_path

#: the folder of a tile-stage output that holds the coords files
COORDS_DIR = "coords"
COORDS = "coords"
TISSUE_FRACTION = "tissue_fraction"

#: attributes every coords file carries (tests check this list)
REQUIRED_ATTRS = (
    # CLAM
    "patch_size",
    "patch_level",
    "downsample",
    "level_dim",
    "downsampled_level_dim",
    "name",
    # TRIDENT
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "level0_width",
    "level0_height",
    # pathfl
    "mpp_level0",
    "target_mpp",
    "tile_size",
    "read_size",
    "backend",
    "tissue_params",
    "pathfl_version",
    "fingerprint",
)
#: attributes without which the tiles of a coords file cannot be read back (a coords file
#: made by another tool must have them too)
READ_ATTRS = ("patch_level", "read_size", "tile_size", "name")


class CoordsFileError(FormatFileError):
    """A coords file is missing, unreadable, or breaks the schema."""


class TileGeometry(NamedTuple):
    """How the tiles of a coords file are read: ``read_size`` px at ``patch_level``, resized
    to ``tile_size`` px when the two differ."""

    patch_level: int
    read_size: int
    tile_size: int


def tile_geometry(attrs: dict[str, Any]) -> TileGeometry:
    """The :class:`TileGeometry` recorded in a coords file's attrs."""
    return TileGeometry(int(attrs["patch_level"]), int(attrs["read_size"]), int(attrs["tile_size"]))


def level0_scale(attrs: dict[str, Any]) -> tuple[float, float]:
    """``(mpp_level0, patch_size_level0)`` of a coords file's (or features file's) attrs: the
    slide's µm/px at level 0 and a tile's side in level-0 px."""
    return float(attrs["mpp_level0"]), float(attrs["patch_size_level0"])


class CoordsFile(NamedTuple):
    """A coords file as read: ``coords`` int64 (N, 2) and the file-level attrs as plain Python
    values (JSON attrs such as ``tissue_params`` stay strings)."""

    coords: np.ndarray
    attrs: dict[str, Any]

    @property
    def geometry(self) -> TileGeometry:
        return tile_geometry(self.attrs)


def level0_attrs(*, name: str, tile_px: int, mpp: float) -> dict[str, Any]:
    """The attrs of a tiling read at level 0 of a one-level slide of ``mpp`` µm/px, in
    ``tile_px`` tiles (synthetic cohorts, which have no slide)."""
    return {
        "patch_size": tile_px,
        "patch_level": 0,
        "downsample": [1.0, 1.0],
        "patch_size_level0": tile_px,
        "tile_size": tile_px,
        "read_size": tile_px,
        "target_mpp": mpp,
        "mpp_level0": mpp,
        "name": name,
    }


def coords_file_path(tiles_dir: str | os.PathLike[str], slide_id: str) -> Path:
    """``tiles_dir/coords/<slide_id>.h5``."""
    return Path(tiles_dir) / COORDS_DIR / f"{slide_id}.h5"


def write_coords(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    attrs: dict[str, Any],
    *,
    tissue_fraction: np.ndarray | None = None,
) -> Path:
    """Write atomically (temp file + rename): a reader never sees a partial file. ``attrs``
    go both on the file and on the ``coords`` dataset (where CLAM reads them)."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset(COORDS, data=coords)
            for k, v in attrs.items():
                f.attrs[k] = v
                ds.attrs[k] = v
            if tissue_fraction is not None:
                f.create_dataset(
                    TISSUE_FRACTION, data=np.asarray(tissue_fraction, dtype=np.float32)
                )
        os.chmod(tmp, 0o644)
    return path


def read_coords(path: str | os.PathLike[str]) -> CoordsFile:
    """``(coords int64 (N, 2), attrs)`` of a coords file, checked against the schema: a
    ``coords`` dataset and the :data:`READ_ATTRS`. Raises :class:`CoordsFileError`."""
    with open_for_reading(path, error=CoordsFileError, what="coords") as f:
        if COORDS not in f:
            raise CoordsFileError(path, f"no {COORDS!r} dataset")
        coords = np.asarray(f[COORDS][:], dtype=np.int64).reshape(-1, 2)
        attrs = plain_attrs(f)
    missing = [k for k in READ_ATTRS if k not in attrs]
    if missing:
        raise CoordsFileError(path, f"coords file lacks attr(s) {', '.join(missing)}")
    return CoordsFile(coords, attrs)


def read_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The ``fingerprint`` attr of an existing coords file; None if absent or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            fp = f.attrs.get("fingerprint")
            return None if fp is None else str(plain(fp))
    except (OSError, KeyError):
        return None
