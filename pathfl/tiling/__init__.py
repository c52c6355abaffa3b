"""Tiling: tissue detection, tile grids at a target mpp, coords files, QC outputs, batches.

The coords file it writes is :mod:`pathfl.formats.coords_h5`. Light on import (numpy, cv2,
h5py); slide backends load when a slide is opened."""

from __future__ import annotations

from pathfl.tiling.coords import read_tile
from pathfl.tiling.grid import GridParams, ReadPlan, plan_read
from pathfl.tiling.pipeline import SlideJob, SlideResult, TileConfig, run_batch, tile_slide
from pathfl.tiling.tissue import TissueMask, TissueParams, detect_tissue

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
