"""Tiling: tissue detection, tile grids at a target mpp, coords files, QC outputs, batches.

The coords file it writes is :mod:`pathfl.formats.coords_h5`. The parameters
(:mod:`pathfl.tiling.params`) need only the standard library; the names below are imported
from their submodules when first used (PEP 562), so ``import pathfl.tiling.params`` (the
command line) does not load numpy, cv2 or h5py. Slide backends load when a slide is opened."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathfl.tiling.coords import read_tile
    from pathfl.tiling.grid import ReadPlan, plan_read
    from pathfl.tiling.params import GridParams, TissueParams
    from pathfl.tiling.pipeline import SlideJob, SlideResult, TileConfig, run_batch, tile_slide
    from pathfl.tiling.tissue import TissueMask, detect_tissue

#: exported name -> submodule of pathfl.tiling that defines it
_EXPORTS = {
    "GridParams": "params",
    "TissueParams": "params",
    "ReadPlan": "grid",
    "plan_read": "grid",
    "read_tile": "coords",
    "SlideJob": "pipeline",
    "SlideResult": "pipeline",
    "TileConfig": "pipeline",
    "run_batch": "pipeline",
    "tile_slide": "pipeline",
    "TissueMask": "tissue",
    "detect_tissue": "tissue",
}

__all__ = [
    "GridParams",
    "ReadPlan",
    "SlideJob",
    "SlideResult",
    "TileConfig",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "plan_read",
    "read_tile",
    "run_batch",
    "tile_slide",
]


def __getattr__(name: str) -> Any:
    """``pathfl.tiling.NAME``: imported from its submodule on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
