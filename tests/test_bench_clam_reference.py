"""The CLAM-style tiling reference of ``scripts/bench_tile.py``
(``scripts/clam_style_reference.py``) on the real CMU slide: what it writes, and that its
patches lie on tissue as pathfl sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REF = Path(__file__).resolve().parents[1] / "scripts" / "clam_style_reference.py"


def run_reference(slide: Path, out: Path, preset: str) -> dict:
    res = subprocess.run(
        [sys.executable, str(REF), str(slide), str(out), "--preset", preset],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["default", "tcga"])
def test_clam_area_filter_drops_the_small_single_level_slide(
    cmu_slide: Path, tmp_path: Path, preset: str
) -> None:
    # Segmented at level 0, CLAM's a_t of 100 (default) or 16 (tcga preset) reference patches
    # of 512² level-0 px (26.2 / 4.2 Mpx²) exceeds the tissue of the whole 2220×2967 slide
    # (6.6 Mpx², ~38 % tissue): no contour, no coords file, no stitch.
    fig = run_reference(cmu_slide, tmp_path, preset)
    assert fig["seg_level"] == 0
    assert (fig["n_contours"], fig["n_tiles"], fig["h5"]) == (0, 0, None)
    assert (tmp_path / "masks" / "CMU-1-Small-Region.jpg").is_file()  # CLAM always saves it
    assert not (tmp_path / "stitches" / "CMU-1-Small-Region.jpg").exists()


def test_biopsy_preset_coords_on_grid_and_on_pathfl_tissue(cmu_slide: Path, tmp_path: Path) -> None:
    from pathfl.slide import open_slide
    from pathfl.tiling import detect_tissue

    fig = run_reference(cmu_slide, tmp_path, "bwh_biopsy")
    with h5py.File(fig["h5"], "r") as f:
        assert list(f) == ["coords"]
        ds = f["coords"]
        coords = ds[:]
        assert (ds.attrs["patch_size"], ds.attrs["patch_level"]) == (256, 0)
        assert tuple(ds.attrs["level_dim"]) == (2220, 2967)
        assert ds.maxshape == (None, 2)
    assert coords.ndim == 2 and coords.shape[1] == 2
    assert len(coords) == fig["n_tiles"] > 10
    assert len(np.unique(coords, axis=0)) == len(coords)
    assert (coords >= 0).all() and (coords < [2220, 2967]).all()
    # every contour's grid starts at its bounding box and steps 256 px: one offset per contour
    offsets = {tuple(o) for o in coords % 256}
    assert 1 <= len(offsets) <= fig["n_contours"]
    assert (tmp_path / "stitches" / "CMU-1-Small-Region.jpg").is_file()

    with open_slide(cmu_slide) as s:
        tm = detect_tissue(s)
    fractions = []
    for x, y in coords:
        x0, y0 = int(x / tm.scale_x), int(y / tm.scale_y)
        x1, y1 = int(np.ceil((x + 256) / tm.scale_x)), int(np.ceil((y + 256) / tm.scale_y))
        fractions.append(tm.mask[y0:y1, x0:x1].mean())
    fractions = np.array(fractions)
    # Measured (pathfl mask at 4 µm/px vs CLAM's level-0 saturation contours): 50 patches,
    # every one ≥ 0.20 tissue, 94 % ≥ 0.25, median 0.998. The bounds leave room for small
    # changes to either mask; patches placed at random on this slide (38 % tissue) fail them.
    assert fractions.min() > 0.05
    assert np.mean(fractions >= 0.25) >= 0.85
    assert np.median(fractions) > 0.9
