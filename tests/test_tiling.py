"""Tissue detection, the tile grid at a target mpp, the coords file and the QC outputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape
from slides import downsample2, synthetic_tissue, write_blank_tiff, write_svs, write_tiled_tiff

from pathfl.formats.coords_h5 import REQUIRED_ATTRS, read_coords
from pathfl.slide import Slide, SlideError, open_slide
from pathfl.tiling import (
    GridParams,
    SlideJob,
    TileConfig,
    TissueMask,
    TissueParams,
    detect_tissue,
    plan_read,
    read_tile,
    tile_slide,
)
from pathfl.tiling.grid import grid_coords, tissue_fractions

BACKENDS = ["openslide", "tiffslide"]


class FakeSlide(Slide):
    """Geometry only (no pixels) for grid arithmetic."""

    backend = "fake"

    def __init__(self, dims: tuple[int, int], mpp: float, n_levels: int = 3) -> None:
        self._dims, self._n_levels = dims, n_levels
        super().__init__("fake.svs", mpp_override=mpp)

    def _open(self):
        (w, h), n = self._dims, self._n_levels
        return (
            tuple((w // 2**i, h // 2**i) for i in range(n)),
            tuple(float(2**i) for i in range(n)),
            {},
        )

    def read_region(self, l0_xy, level, size_px):  # pragma: no cover - unused
        return Image.new("RGB", size_px, (255, 255, 255))

    def close(self) -> None:
        pass


# --- grid arithmetic -------------------------------------------------------------------


def test_plan_picks_level_matching_target() -> None:
    plan = plan_read(FakeSlide((8000, 6000), 0.25), GridParams(target_mpp=0.5, tile_px=224))
    assert (plan.level, plan.read_px, plan.size_l0, plan.step_l0) == (1, 224, 448, 448)
    assert not plan.resize


def test_plan_within_tolerance_does_not_resize() -> None:
    plan = plan_read(FakeSlide((8000, 6000), 0.499), GridParams(target_mpp=0.5))
    assert plan.level == 0 and plan.read_px == 224 and not plan.resize


def test_plan_scales_read_size_between_levels() -> None:
    # 0.3 µm/px level 0, 0.6 at level 1: level 1 is coarser than 0.5, so read level 0
    plan = plan_read(FakeSlide((8000, 6000), 0.3), GridParams(target_mpp=0.5, tile_px=224))
    assert plan.level == 0 and plan.read_px == round(224 * 0.5 / 0.3) and plan.resize
    # same physical size whatever the scanner: size_l0 * mpp ≈ tile_px * target
    assert plan.size_l0 * 0.3 == pytest.approx(224 * 0.5, rel=0.01)


def test_plan_overlap_sets_stride() -> None:
    plan = plan_read(FakeSlide((8000, 6000), 0.25), GridParams(tile_px=224, overlap_px=24))
    assert plan.step_l0 == (224 - 24) * 2


def test_plan_refuses_upsampling() -> None:
    with pytest.raises(SlideError, match="coarser than the target"):
        plan_read(FakeSlide((8000, 6000), 1.0), GridParams(target_mpp=0.5))


def test_grid_stays_inside_slide_and_read_level() -> None:
    s = FakeSlide((1001, 777), 0.25)
    plan = plan_read(s, GridParams(target_mpp=0.5, tile_px=100))
    coords = grid_coords(s, plan)
    assert len(coords) == (1001 // 200) * (777 // 200)
    assert (coords[:, 0] + plan.size_l0 <= 1001).all() and (
        coords[:, 1] + plan.size_l0 <= 777
    ).all()


def test_tissue_fractions_of_half_mask() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[:, :50] = True  # left half tissue; mask px = 10 level-0 px
    tm = TissueMask(mask=mask, scale_x=10.0, scale_y=10.0, threshold=0.1)
    coords = np.array([[0, 0], [600, 0], [400, 300], [450, 0]])
    frac = tissue_fractions(coords, 200, tm)
    assert frac == pytest.approx([1.0, 0.0, 0.5, 0.25])


# --- tissue detection --------------------------------------------------------------------


def test_tissue_found_on_real_cmu_slide(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        tm = detect_tissue(s)
    assert 0.2 < tm.tissue_fraction < 0.7
    polys = tm.polygons_level0()
    assert polys, "no tissue contour on the CMU slide"
    biggest = max(polys, key=lambda rings: len(rings[0]))[0]
    assert np.ptp(biggest[:, 1]) > 0.8 * 2967  # the tissue runs the height of the slide


def test_blank_slide_has_no_tissue(tmp_path: Path) -> None:
    path = write_blank_tiff(tmp_path / "blank.tif", 1024, 1024)
    with open_slide(path) as s:
        assert not detect_tissue(s).mask.any()


def test_pen_removal(tmp_path: Path) -> None:
    rgb = synthetic_tissue(1024, 1024, seed=2, pen=True)
    path = write_tiled_tiff(tmp_path / "pen.tif", rgb, mpp=0.5)
    with open_slide(path) as s:
        keep = detect_tissue(s, TissueParams(remove_pen=False))
        drop = detect_tissue(s, TissueParams(remove_pen=True))
    # the stroke crosses the top of the slide (rows ~ 0.12-0.17 of the height)
    band = slice(int(0.13 * keep.mask.shape[0]), int(0.15 * keep.mask.shape[0]))
    assert keep.mask[band].mean() > 0.5
    assert drop.mask[band].mean() < 0.1
    assert drop.mask.sum() < keep.mask.sum()


def test_tissue_params_validation() -> None:
    with pytest.raises(ValueError):
        TissueParams(saturation_threshold=2.0)
    with pytest.raises(ValueError, match="unknown tissue parameter"):
        TissueParams.from_dict({"bogus": 1})
    assert TissueParams.from_dict(TissueParams().to_dict()) == TissueParams()


# --- same tissue scanned at 0.25 and 0.5 µm/px -------------------------------------------


@pytest.fixture(scope="module")
def two_scanners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scanners")
    hi = synthetic_tissue(1536, 2048, seed=11)
    lo = downsample2(hi)
    return {
        "hi": write_svs(d / "s40x.svs", hi, mpp=0.25, app_mag=40, levels=3),
        "lo": write_tiled_tiff(d / "s20x.tif", lo, mpp=0.5, levels=3),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_physical_grid_at_025_and_05_mpp(
    two_scanners: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    cfg = TileConfig(grid=GridParams(target_mpp=0.5, tile_px=32), backend=backend)
    out = {}
    for key, path in two_scanners.items():
        r = tile_slide(SlideJob(key, path), tmp_path, cfg)
        assert r.status == "ok", r.error
        out[key] = read_coords(tmp_path / "coords" / f"{key}.h5")
    (c_hi, a_hi), (c_lo, a_lo) = out["hi"], out["lo"]
    # the 40x slide is read at its 0.5 µm/px level, the 20x slide at level 0; no resizing
    assert (a_hi["patch_level"], a_hi["patch_size"]) == (1, 32)
    assert (a_lo["patch_level"], a_lo["patch_size"]) == (0, 32)
    assert a_hi["patch_size_level0"] == 2 * a_lo["patch_size_level0"]
    # same grid in physical space: hi coordinates are lo coordinates x 2
    assert (c_hi % 2 == 0).all()
    hi_set = {tuple(c) for c in (c_hi // 2).tolist()}
    lo_set = {tuple(c) for c in c_lo.tolist()}
    assert len(lo_set) > 200
    assert abs(len(hi_set) - len(lo_set)) <= 0.02 * len(lo_set)
    # and (nearly) the same tiles, not just the same number of them
    assert len(hi_set ^ lo_set) <= 0.04 * len(lo_set)


# --- coords file and QC outputs ----------------------------------------------------------


@pytest.fixture(scope="module")
def cmu_out(cmu_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmu_out")
    r = tile_slide(SlideJob("CMU-1-Small-Region", cmu_slide), out, TileConfig())
    assert r.status == "ok", r.error
    return out


def test_cmu_plausible_tile_count(cmu_out: Path) -> None:
    coords, attrs = read_coords(cmu_out / "coords" / "CMU-1-Small-Region.h5")
    # 2220x2967 px at 0.499 µm/px = 9 x 13 tiles of 224 px; the tissue covers ~40 %
    assert 35 <= len(coords) <= 90
    assert attrs["target_mpp"] == 0.5 and attrs["tile_size"] == 224


def test_attrs_present_and_consistent(cmu_out: Path, cmu_slide: Path) -> None:
    coords, a = read_coords(cmu_out / "coords" / "CMU-1-Small-Region.h5")
    missing = [k for k in REQUIRED_ATTRS if k not in a]
    assert not missing
    assert coords.dtype == np.int64 and coords.shape[1] == 2
    assert a["name"] == "CMU-1-Small-Region"
    assert (a["level0_width"], a["level0_height"]) == (2220, 2967)
    assert a["mpp_level0"] == pytest.approx(0.499)
    assert a["patch_level"] == 0 and a["patch_size"] == 224 and a["read_size"] == 224
    assert a["patch_size_level0"] == round(a["patch_size"] * a["downsample"][0])
    assert list(a["level_dim"]) == [2220, 2967]
    assert a["level0_magnification"] == 20 and a["target_magnification"] == 20
    assert a["overlap"] == 0 and a["backend"] == "openslide"
    assert TissueParams.from_dict(json.loads(a["tissue_params"])) == TissueParams()
    assert len(a["fingerprint"]) == 64
    assert Path(a["slide_path"]) == cmu_slide
    assert (coords >= 0).all() and (coords % 224 == 0).all()
    assert (coords[:, 0] + 224 <= 2220).all() and (coords[:, 1] + 224 <= 2967).all()


def test_clam_style_read(cmu_out: Path, cmu_slide: Path) -> None:
    with h5py.File(cmu_out / "coords" / "CMU-1-Small-Region.h5", "r") as f:
        coords = f["coords"][:]
        patch_size = int(f["coords"].attrs["patch_size"])
        patch_level = int(f["coords"].attrs["patch_level"])
        assert int(f.attrs["patch_size"]) == patch_size
    import openslide

    wsi = openslide.OpenSlide(str(cmu_slide))
    x, y = (int(v) for v in coords[len(coords) // 2])
    img = wsi.read_region((x, y), patch_level, (patch_size, patch_size)).convert("RGB")
    assert img.size == (224, 224)
    assert np.asarray(img).std() > 10  # a tissue tile


def test_read_tile_and_tiles_contain_tissue(cmu_out: Path, cmu_slide: Path) -> None:
    coords, attrs = read_coords(cmu_out / "coords" / "CMU-1-Small-Region.h5")
    with open_slide(cmu_slide) as s:
        sats = []
        for xy in coords[:: max(1, len(coords) // 10)]:
            tile = read_tile(s, tuple(xy), attrs)
            assert tile.size == (224, 224)
            sats.append(np.asarray(tile.convert("HSV"))[..., 1].mean())
    assert np.median(sats) > 40  # stained tissue, not glass (glass saturation ≈ 5)


def test_read_tile_resizes_when_levels_do_not_match(tmp_path: Path) -> None:
    rgb = synthetic_tissue(900, 900, seed=4)
    path = write_tiled_tiff(tmp_path / "odd.tif", rgb, mpp=0.3, levels=2)
    r = tile_slide(SlideJob("odd", path), tmp_path, TileConfig(grid=GridParams(tile_px=64)))
    assert r.status == "ok", r.error
    coords, attrs = read_coords(tmp_path / "coords" / "odd.h5")
    assert attrs["read_size"] == round(64 * 0.5 / 0.3) and attrs["patch_size"] == attrs["read_size"]
    with open_slide(path) as s:
        assert read_tile(s, tuple(coords[0]), attrs).size == (64, 64)


def test_qc_thumbnail_and_geojson(cmu_out: Path) -> None:
    png = Image.open(cmu_out / "thumbnails" / "CMU-1-Small-Region.png")
    assert max(png.size) <= 1200 and png.mode == "RGB"
    gj = json.loads((cmu_out / "geojson" / "CMU-1-Small-Region.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    total = 0.0
    for feat in gj["features"]:
        assert feat["properties"]["objectType"] == "annotation"
        assert feat["properties"]["classification"]["name"] == "Tissue"
        geom = shape(feat["geometry"])
        assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
        minx, miny, maxx, maxy = geom.bounds
        assert minx >= 0 and miny >= 0 and maxx <= 2220 + 1 and maxy <= 2967 + 1
        total += geom.area
    assert 0.2 < total / (2220 * 2967) < 0.7


def test_cmu_cannot_be_tiled_finer_than_scanned(cmu_slide: Path, tmp_path: Path) -> None:
    r = tile_slide(
        SlideJob("cmu", cmu_slide), tmp_path, TileConfig(grid=GridParams(target_mpp=0.25))
    )
    assert r.status == "failed" and "coarser than the target" in r.error
    assert not (tmp_path / "coords" / "cmu.h5").exists()
