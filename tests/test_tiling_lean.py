"""The memory-lean tiling path gives exactly the output of the original one: the int32
integral image equals the float64 cumsum it replaced, strip-wise saturation and pen masks equal
the whole-image ones, the QC PNG is lossless, and the CMU slide's coords and tissue fractions
are bit-identical to those of the float64 implementation (commit 0b9e094)."""

from __future__ import annotations

import hashlib

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image
from slides import synthetic_tissue

from pathfl.formats.coords_h5 import coords_file_path, read_coords
from pathfl.tiling import SlideJob, TileConfig, TissueMask, TissueParams, tile_slide
from pathfl.tiling import grid as grid_mod
from pathfl.tiling.qc import write_png
from pathfl.tiling.tissue import detect_tissue_rgb, overview_saturation, pen_mask

# sha256 of the CMU slide's coords (int64 little-endian) and tissue fractions (float32) with the
# default TileConfig, as written by the float64-cumsum implementation before this change
CMU_COORDS_SHA = "3ba7a5600337b2d9baaa2df080dfd04e655db967b80bd1d81f911c778a93588b"
CMU_FRAC_SHA = "6348d3825dd6b9d70c325cc94d2d8c13d16716b0fe3a2ae0056859c97def1111"


def float64_integral(mask: np.ndarray) -> np.ndarray:
    """The summed-area table as it was computed before (float64 cumsum)."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    return integral


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    detected = detect_tissue_rgb(synthetic_tissue(240, 330, seed=5), TissueParams(), mpp=4.0)
    return [
        rng.random((37, 53)) < 0.4,
        np.ones((19, 7), dtype=bool),
        np.zeros((5, 11), dtype=bool),
        detected.mask,
    ]


@pytest.mark.parametrize("i", range(4))
def test_mask_integral_equals_float64_cumsum(i):
    mask = _masks()[i]
    integral = grid_mod.mask_integral(mask)
    assert integral.dtype == np.int32
    assert np.array_equal(integral, float64_integral(mask))


def test_tissue_fractions_identical_to_float64_integral(monkeypatch):
    rng = np.random.default_rng(1)
    mask = _masks()[3]
    assert 0.05 < mask.mean() < 0.95
    tm = TissueMask(mask=mask, scale_x=13.37, scale_y=12.91, threshold=0.1)
    coords = rng.integers(-200, 4600, size=(500, 2))
    lean = grid_mod.tissue_fractions(coords, 224, tm)
    monkeypatch.setattr(grid_mod, "mask_integral", float64_integral)
    old = grid_mod.tissue_fractions(coords, 224, tm)
    assert 0 < lean.mean() < 1
    assert np.array_equal(lean, old)


def test_strip_wise_saturation_and_pen_equal_whole_image():
    rgb = synthetic_tissue(301, 410, seed=2, pen=True)
    s = overview_saturation(rgb, remove_pen=True, rows=7)
    assert np.array_equal(s.sat, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
    assert s.pen is not None and s.pen.any()
    assert np.array_equal(s.pen, pen_mask(rgb))
    assert overview_saturation(rgb, remove_pen=False).pen is None


def test_qc_png_is_lossless(tmp_path):
    rgb = synthetic_tissue(97, 131, seed=3)
    path = write_png(tmp_path / "qc.png", rgb)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)


def test_cmu_coords_bit_identical_to_float64_implementation(cmu_slide, tmp_path):
    r = tile_slide(SlideJob("cmu", cmu_slide), tmp_path, TileConfig())
    assert r.status == "ok", r.error
    coords, _attrs = read_coords(coords_file_path(tmp_path, "cmu"))
    with h5py.File(coords_file_path(tmp_path, "cmu")) as f:
        frac = f["tissue_fraction"][:]
    assert len(coords) == 55
    c = np.ascontiguousarray(coords, dtype="<i8")
    assert hashlib.sha256(c.tobytes()).hexdigest() == CMU_COORDS_SHA
    f32 = np.ascontiguousarray(frac, dtype="<f4")
    assert hashlib.sha256(f32.tobytes()).hexdigest() == CMU_FRAC_SHA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cleaning_on_the_tissue_bounding_box_equals_whole_mask(seed):
    from pathfl.tiling.tissue import _clean_within_bbox, _fill_small_holes, _remove_small

    rng = np.random.default_rng(seed)
    mask = np.zeros((120, 150), dtype=bool)
    y, x = rng.integers(0, 60), rng.integers(0, 80)
    mask[y : y + 55, x : x + 65] = rng.random((55, 65)) < 0.7  # specks, pieces and holes
    if seed == 2:
        mask[:, 0] = True  # tissue on the slide's border: no margin on that side
    whole = _fill_small_holes(_remove_small(mask.copy(), 6), 9)
    assert np.array_equal(_clean_within_bbox(mask.copy(), min_px=6, max_hole_px=9), whole)
    assert not np.array_equal(whole, mask)  # the cleaning did something
