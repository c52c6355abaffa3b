"""Tiling: tissue detection, tile grids at a target mpp, coords files, QC outputs, batches.

Light on import (numpy, cv2, h5py); slide backends load when a slide is opened."""

from __future__ import annotations

from pathfl.tiling.coords_io import REQUIRED_ATTRS, read_coords, read_tile, write_coords
from pathfl.tiling.grid import GridParams, ReadPlan, plan_read
from pathfl.tiling.pipeline import SlideJob, SlideResult, TileConfig, run_batch, tile_slide
from pathfl.tiling.tissue import TissueMask, TissueParams, detect_tissue

__all__ = [
    "REQUIRED_ATTRS",
    "GridParams",
    "ReadPlan",
    "SlideJob",
    "SlideResult",
    "TileConfig",
    "TissueMask",
    "TissueParams",
    "detect_tissue",
    "plan_read",
    "read_coords",
    "read_tile",
    "run_batch",
    "tile_slide",
    "write_coords",
]
