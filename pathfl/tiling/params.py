"""Tiling parameters: the tile grid (:class:`GridParams`) and tissue detection
(:class:`TissueParams`), with one help text per field (:data:`GRID_HELP`,
:data:`TISSUE_HELP`) from which ``pathfl tile`` builds its options.

No numpy or cv2 here (standard library and :mod:`pathfl.config`), so the command line can
read the fields without importing them (see :mod:`pathfl.tiling.grid` and
:mod:`pathfl.tiling.tissue` for what they drive)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pathfl.config import dataclass_from_dict


@dataclass(frozen=True)
class GridParams:
    """Attributes:
    target_mpp: µm/px of the tiles handed to the encoder.
    tile_px: tile side at ``target_mpp``.
    overlap_px: overlap between neighbouring tiles at ``target_mpp``.
    mpp_tolerance: relative tolerance when comparing level mpp with the target.
    min_tissue_fraction: keep tiles whose area is at least this fraction tissue.
    """

    target_mpp: float = 0.5
    tile_px: int = 224
    overlap_px: int = 0
    mpp_tolerance: float = 0.05
    min_tissue_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target mpp must be > 0, got {self.target_mpp}")
        if self.tile_px < 8:
            raise ValueError(f"tile size must be ≥ 8 px, got {self.tile_px}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"overlap must be in [0, tile_px), got {self.overlap_px}")
        if not 0 <= self.mpp_tolerance < 1:
            raise ValueError(f"mpp tolerance must be in [0, 1), got {self.mpp_tolerance}")
        if not 0 <= self.min_tissue_fraction <= 1:
            raise ValueError("min tissue fraction must be in [0, 1]")

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


#: help text of each :class:`GridParams` field (``pathfl tile --help``)
GRID_HELP: dict[str, str] = {
    "target_mpp": "Target µm/px of the tiles.",
    "tile_px": "Tile side in px at the target mpp.",
    "overlap_px": "Overlap between tiles in px (target mpp).",
    "mpp_tolerance": "Relative tolerance for matching a level to the target.",
    "min_tissue_fraction": "Keep tiles whose area is at least this fraction tissue.",
}


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection parameters (all overridable from CLI / YAML).

    Attributes:
        mask_mpp: resolution of the tissue mask in µm/px.
        saturation_threshold: fixed HSV saturation threshold in [0, 1]; None = Otsu.
        min_saturation, max_saturation: band the Otsu threshold is clipped to (keeps a blank
            slide blank and a slide full of tissue from splitting the tissue in two).
        blur_um: median-blur window (µm).
        close_um: closing radius (µm), joins fragments of one piece of tissue.
        min_object_um2: tissue pieces smaller than this are dropped (dust, debris).
        max_hole_um2: holes smaller than this are filled.
        remove_pen: drop blue, green and black ink marks from the mask.
    """

    mask_mpp: float = 4.0
    saturation_threshold: float | None = None
    min_saturation: float = 0.05
    max_saturation: float = 0.15
    blur_um: float = 20.0
    close_um: float = 16.0
    min_object_um2: float = 20000.0
    max_hole_um2: float = 40000.0
    remove_pen: bool = False

    def __post_init__(self) -> None:
        if self.mask_mpp <= 0:
            raise ValueError(f"tissue mask_mpp must be > 0, got {self.mask_mpp}")
        thr = self.saturation_threshold
        if thr is not None and not 0 <= thr <= 1:
            raise ValueError(f"tissue saturation_threshold must be in [0, 1], got {thr}")
        if not 0 <= self.min_saturation <= self.max_saturation <= 1:
            raise ValueError("tissue saturation band must satisfy 0 ≤ min ≤ max ≤ 1")
        for name in ("blur_um", "close_um", "min_object_um2", "max_hole_um2"):
            if getattr(self, name) < 0:
                raise ValueError(f"tissue {name} must be ≥ 0")

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TissueParams:
        return dataclass_from_dict(cls, d, what="tissue parameter(s)")


#: help text of each :class:`TissueParams` field (``pathfl tile --help``)
TISSUE_HELP: dict[str, str] = {
    "mask_mpp": "Tissue mask resolution (µm/px).",
    "saturation_threshold": "Fixed HSV saturation threshold in [0, 1]; unset: Otsu's.",
    "min_saturation": "Lower clip of the Otsu threshold.",
    "max_saturation": "Upper clip of the Otsu threshold.",
    "blur_um": "Median blur window (µm).",
    "close_um": "Morphological closing radius (µm).",
    "min_object_um2": "Drop tissue pieces below (µm²).",
    "max_hole_um2": "Fill holes below (µm²).",
    "remove_pen": "Remove blue/green/black ink from the mask.",
}
