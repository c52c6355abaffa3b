"""The coordinates file ``OUT/coords/<slide_id>.h5`` (see DESIGN.md).

Dataset ``coords`` int64 (N, 2) level-0 top-left (x, y); dataset ``tissue_fraction`` float32
(N,); attributes are the union of the CLAM and TRIDENT conventions plus pathfl's own, so
``f['coords'][:]``, ``f['coords'].attrs['patch_size']`` / ``['patch_level']`` (CLAM puts them
on the dataset) and ``f.attrs[...]`` (file level) all work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from pathfl import __version__
from pathfl.io import atomic_path
from pathfl.slide.base import Slide
from pathfl.tiling.grid import GridParams, ReadPlan
from pathfl.tiling.tissue import TissueParams

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


def _mag(value: float) -> int | float:
    """Nominal magnification: an integer when within 2 % of one (0.499 µm/px at 20x → 20)."""
    r = round(value)
    return int(r) if r > 0 and abs(value - r) / r < 0.02 else round(float(value), 3)


def build_attrs(
    slide: Slide,
    plan: ReadPlan,
    grid: GridParams,
    tissue: TissueParams,
    *,
    fingerprint: str,
) -> dict[str, Any]:
    """All attributes of a coords file for ``slide`` tiled with ``plan``."""
    assert slide.mpp is not None
    w0, h0 = slide.dimensions
    level_dim = np.asarray(slide.level_dimensions[plan.level], dtype=np.int64)
    level0_mag = slide.objective_power if slide.objective_power else 10.0 / slide.mpp
    return {
        "patch_size": int(plan.read_px),
        "patch_level": int(plan.level),
        "downsample": np.array([plan.downsample, plan.downsample], dtype=np.float64),
        "level_dim": level_dim,
        "downsampled_level_dim": level_dim.copy(),
        "name": slide.slide_id,
        "patch_size_level0": int(plan.size_l0),
        "level0_magnification": _mag(level0_mag),
        # magnification equivalent of the target resolution (10x ≈ 1 µm/px)
        "target_magnification": _mag(level0_mag * slide.mpp / grid.target_mpp),
        "overlap": int(grid.overlap_px),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "mpp_level0": float(slide.mpp),
        "mpp_source": slide.mpp_source,
        "level_mpp": float(plan.level_mpp),
        "target_mpp": float(grid.target_mpp),
        "tile_size": int(plan.tile_px),
        "read_size": int(plan.read_px),
        "step_level0": int(plan.step_l0),
        "min_tissue_fraction": float(grid.min_tissue_fraction),
        "mpp_tolerance": float(grid.mpp_tolerance),
        "backend": slide.backend,
        "vendor": slide.vendor,
        "slide_path": str(slide.path),
        "tissue_params": json.dumps(tissue.to_dict(), sort_keys=True),
        "pathfl_version": __version__,
        "fingerprint": fingerprint,
    }


def write_coords(
    path: str | os.PathLike[str],
    coords: np.ndarray,
    attrs: dict[str, Any],
    *,
    tissue_fraction: np.ndarray | None = None,
) -> Path:
    """Write atomically (temp file + rename): a reader never sees a partial file."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("coords", data=coords)
            for k, v in attrs.items():
                f.attrs[k] = v
                ds.attrs[k] = v  # CLAM reads patch_size / patch_level from the dataset
            if tissue_fraction is not None:
                f.create_dataset(
                    "tissue_fraction", data=np.asarray(tissue_fraction, dtype=np.float32)
                )
        os.chmod(tmp, 0o644)
    return path


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def read_coords(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """``(coords int64 (N, 2), attrs)``; attrs are plain Python values (JSON attrs such as
    ``tissue_params`` stay strings)."""
    with h5py.File(path, "r") as f:
        coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    return coords, attrs


def read_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The ``fingerprint`` attr of an existing coords file; None if absent or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            fp = f.attrs.get("fingerprint")
            return None if fp is None else str(_plain(fp))
    except (OSError, KeyError):
        return None


def read_tile(slide: Slide, l0_xy: tuple[int, int], attrs: dict[str, Any]) -> Image.Image:
    """The tile at level-0 ``l0_xy`` as the encoder sees it: ``read_size`` px read at
    ``patch_level``, resized to ``tile_size`` only when the two differ."""
    read_px, tile_px = int(attrs["read_size"]), int(attrs["tile_size"])
    img = slide.read_region(
        (int(l0_xy[0]), int(l0_xy[1])), int(attrs["patch_level"]), (read_px, read_px)
    )
    if read_px != tile_px:
        img = img.resize((tile_px, tile_px), Image.Resampling.BILINEAR)
    return img
