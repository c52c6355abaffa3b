"""Slide layer: both backends on synthetic generic-TIFF and Aperio slides and on the real CMU
slide; the mpp resolution chain; clear errors for unusable files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from slides import synthetic_tissue, write_ome_tiff, write_svs, write_tiled_tiff

from pathfl.registry import UnknownNameError
from pathfl.slide import SlideError, list_readers, open_slide
from pathfl.slide.metadata import mpp_from_vendor, objective_power, resolve_mpp

BACKENDS = ["openslide", "tiffslide"]


@pytest.fixture(scope="module")
def tissue_rgb() -> np.ndarray:
    return synthetic_tissue(768, 1024, seed=5)


@pytest.fixture(scope="module")
def slide_files(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> dict:
    d = tmp_path_factory.mktemp("slides")
    return {
        "tiff": write_tiled_tiff(d / "generic.tif", tissue_rgb, mpp=0.5, levels=3),
        "tiff_inch": write_tiled_tiff(
            d / "inch.tif", tissue_rgb, mpp=0.25, levels=3, resolution_unit="INCH"
        ),
        "svs": write_svs(d / "aperio.svs", tissue_rgb, mpp=0.25, app_mag=40),
        "ome": write_ome_tiff(d / "pyramid.ome.tif", tissue_rgb, mpp=0.5),
        "ome_nm": write_ome_tiff(d / "nm.ome.tif", tissue_rgb, mpp=0.25, unit="nm", levels=2),
        "svs_mismatch": write_svs(d / "mismatch.svs", tissue_rgb, mpp=0.25, app_mag=20),
        "no_mpp": write_tiled_tiff(d / "nompp.tif", tissue_rgb, mpp=None),
        "dpi72": write_tiled_tiff(
            d / "dpi72.tif", tissue_rgb, mpp=25400 / 72, resolution_unit="INCH"
        ),
    }


def test_registry_lists_both_backends() -> None:
    assert {"openslide", "tiffslide"} <= set(list_readers())


@pytest.mark.parametrize("backend", BACKENDS)
def test_generic_tiff_levels_and_mpp(slide_files: dict, backend: str) -> None:
    with open_slide(slide_files["tiff"], backend=backend) as s:
        assert s.backend == backend
        assert s.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert s.mpp == pytest.approx(0.5)
        assert s.level_mpp(2) == pytest.approx(2.0)
        assert s.mpp_source in ("vendor", "tiff-resolution")
        assert s.slide_id == "generic"


@pytest.mark.parametrize("backend", BACKENDS)
def test_resolution_in_inches(slide_files: dict, backend: str) -> None:
    with open_slide(slide_files["tiff_inch"], backend=backend) as s:
        assert s.mpp == pytest.approx(0.25, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_aperio_metadata(slide_files: dict, backend: str) -> None:
    with open_slide(slide_files["svs"], backend=backend) as s:
        assert s.vendor == "aperio"
        assert s.mpp == pytest.approx(0.25)
        assert s.objective_power == 40
        assert s.level_count == 3
        assert not s.warnings


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_pixels_and_white_outside(
    slide_files: dict, backend: str, tissue_rgb: np.ndarray
) -> None:
    with open_slide(slide_files["tiff"], backend=backend) as s:
        img = s.read_region((300, 200), 0, (64, 48))
        assert img.mode == "RGB" and img.size == (64, 48)
        # JPEG-compressed, so close to (not equal to) the written pixels
        diff = np.abs(np.asarray(img, dtype=int) - tissue_rgb[200:248, 300:364].astype(int))
        assert diff.mean() < 8
        # level 1 region at level-0 coordinates
        lvl1 = np.asarray(s.read_region((512, 384), 1, (32, 32)), dtype=float)
        ref = tissue_rgb[384:448, 512:576].reshape(32, 2, 32, 2, 3).mean((1, 3))
        assert np.abs(lvl1 - ref).mean() < 8
        # a region hanging over the right edge is white outside the slide
        edge = np.asarray(s.read_region((1024 - 8, 0), 0, (16, 16)))
        assert (edge[:, 8:] == 255).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mpp_override_wins(slide_files: dict, backend: str) -> None:
    with open_slide(slide_files["svs"], backend=backend, mpp_override=0.3) as s:
        assert s.mpp == 0.3 and s.mpp_source == "override"


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_mpp_says_how_to_supply_it(slide_files: dict, backend: str) -> None:
    with pytest.raises(SlideError) as e:
        open_slide(slide_files["no_mpp"], backend=backend)
    msg = str(e.value)
    assert "nompp.tif" in msg and "--mpp-override" in msg and "--slides-csv" in msg
    with open_slide(slide_files["no_mpp"], backend=backend, mpp_override=0.5) as s:
        assert s.mpp == 0.5


def test_implausible_resolution_tags_are_ignored(slide_files: dict) -> None:
    """72 dpi (an ordinary image's default) is not a microscope resolution."""
    with pytest.raises(SlideError, match="microns per pixel unknown"):
        open_slide(slide_files["dpi72"], backend="tiffslide")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mpp_objective_mismatch_warns(
    slide_files: dict, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING),
        open_slide(slide_files["svs_mismatch"], backend=backend) as s,
    ):
        assert s.objective_power == 20 and s.mpp == pytest.approx(0.25)
        assert s.warnings and "20x" in s.warnings[0]
    assert any("disagrees with objective power" in r.message for r in caplog.records)


def test_resolve_mpp_chain_order() -> None:
    props = {
        "openslide.mpp-x": "0.26",
        "tiff.ImageDescription": "Aperio Image Library|MPP = 0.5",
        "tiff.XResolution": "40000",
        "tiff.ResolutionUnit": "centimeter",
    }
    assert resolve_mpp(props, override=0.7, where="x") == (0.7, "override")
    assert resolve_mpp(props, override=None, where="x") == (0.26, "vendor")
    del props["openslide.mpp-x"]
    assert resolve_mpp(props, override=None, where="x") == (0.5, "aperio")
    props["tiff.ImageDescription"] = ""
    assert resolve_mpp(props, override=None, where="x") == (0.25, "tiff-resolution")
    with pytest.raises(SlideError, match="positive"):
        resolve_mpp(props, override=-1, where="x")


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
def test_non_slide_and_missing_files(tmp_path: Path, backend: str) -> None:
    junk = tmp_path / "notes.svs"
    junk.write_text("this is not a slide\n" * 100)
    with pytest.raises(SlideError, match=r"notes\.svs"):
        open_slide(junk, backend=backend)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "absent.svs", backend=backend)
    with pytest.raises(SlideError, match="directory"):
        open_slide(tmp_path, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_file_is_refused(slide_files: dict, tmp_path: Path, backend: str) -> None:
    data = Path(slide_files["tiff"]).read_bytes()
    for frac in (0.5, 0.95):
        cut = tmp_path / f"cut{int(frac * 100)}.tif"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(SlideError, match="truncated"):
            open_slide(cut, backend=backend)


def test_unknown_backend_lists_valid_names(slide_files: dict) -> None:
    with pytest.raises(UnknownNameError, match=r"openslide.*tiffslide"):
        open_slide(slide_files["tiff"], backend="bioformats")


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_cmu_slide(cmu_slide: Path, backend: str) -> None:
    with open_slide(cmu_slide, backend=backend) as s:
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert s.vendor == "aperio"
        thumb = s.get_thumbnail(256)
        assert max(thumb.size) == 256
        px = np.asarray(s.read_region((1000, 1500), 0, (128, 128)))
        assert px.std() > 10  # tissue, not blank


def test_backends_agree_on_cmu_pixels(cmu_slide: Path) -> None:
    with (
        open_slide(cmu_slide, backend="openslide") as a,
        open_slide(cmu_slide, backend="tiffslide") as b,
    ):
        pa = np.asarray(a.read_region((700, 900), 0, (256, 256)), dtype=int)
        pb = np.asarray(b.read_region((700, 900), 0, (256, 256)), dtype=int)
    assert np.abs(pa - pb).mean() < 6  # same tile, different JPEG decoders


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_downsampled_blocks_match_whole(
    slide_files: dict, backend: str, tissue_rgb: np.ndarray
) -> None:
    with open_slide(slide_files["tiff"], backend=backend) as s:
        whole = s.read_downsampled((300, 225))
        blocks = s.read_downsampled((300, 225), block_px=64)
        thumb = s.get_thumbnail(200)
    assert whole.shape == blocks.shape == (225, 300, 3)
    assert np.abs(whole.astype(int) - blocks.astype(int)).mean() < 3
    assert thumb.size == (200, 150)
    # the overview shows the written image (box-downsampled)
    ref = np.asarray(Image.fromarray(tissue_rgb).resize((300, 225), Image.Resampling.BOX))
    assert np.abs(whole.astype(int) - ref.astype(int)).mean() < 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_ome_tiff_mpp_from_ome_xml(slide_files: dict, backend: str) -> None:
    for key, mpp in (("ome", 0.5), ("ome_nm", 0.25)):
        with open_slide(slide_files[key], backend=backend) as s:
            assert s.mpp == pytest.approx(mpp) and s.mpp_source == "ome"
            assert s.dimensions == (1024, 768)
            assert s.slide_id == {"ome": "pyramid", "ome_nm": "nm"}[key]  # not "pyramid.ome"


def test_ome_tiff_subifd_pyramid_is_read_by_auto(slide_files: dict) -> None:
    """OpenSlide ignores SubIFDs (one full-size level); "auto" then takes tiffslide's pyramid,
    and both give the same level-0 pixels."""
    with open_slide(slide_files["ome"], backend="openslide") as s:
        assert s.level_count == 1
        ref = np.asarray(s.read_region((100, 50), 0, (300, 200)))
    with open_slide(slide_files["ome"]) as s:
        assert s.backend == "tiffslide"
        assert s.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert np.array_equal(np.asarray(s.read_region((100, 50), 0, (300, 200))), ref)
    with open_slide(slide_files["tiff"]) as s:  # a normal pyramid stays with OpenSlide
        assert s.backend == "openslide"


def test_ome_xml_parsing_edge_cases() -> None:
    ns = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
    xml = (
        f'<?xml version="1.0"?><OME xmlns="{ns}"><Instrument><Objective ID="Objective:0" '
        f'NominalMagnification="40"/></Instrument><Image ID="Image:0"><Pixels '
        f'PhysicalSizeX="250" PhysicalSizeXUnit="nm" SizeX="10" SizeY="10"/></Image></OME>'
    )
    props = {"tiff.ImageDescription": xml}
    assert mpp_from_vendor(props) == (pytest.approx(0.25), "ome")
    assert objective_power(props) == 40
    no_unit = {
        "tiff.ImageDescription": xml.replace(' PhysicalSizeXUnit="nm"', "").replace(
            '"250"', '"0.5"'
        )
    }
    assert mpp_from_vendor(no_unit) == (pytest.approx(0.5), "ome")  # the schema default is µm
    for broken in (xml[:-10], xml.replace('"250"', '"abc"'), xml.replace('"nm"', '"pc"')):
        assert mpp_from_vendor({"tiff.ImageDescription": broken}) == (None, "")


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory: pytest.TempPathFactory, tissue_rgb: np.ndarray) -> list[Path]:
    pytest.importorskip("pydicom")
    from slides import write_dicom_wsi

    return write_dicom_wsi(tmp_path_factory.mktemp("dicom") / "case-7", tissue_rgb, mpp=0.25)


def test_dicom_wsi_series(dicom_slide: list[Path], tissue_rgb: np.ndarray) -> None:
    """A DICOM WSI series (one file per level) opens through OpenSlide from any of its files:
    the pyramid, mpp from PixelSpacing, the folder name as slide id, the pixels (JPEG q90)."""
    for path in (dicom_slide[0], dicom_slide[-1]):  # any file of the series opens the slide
        with open_slide(path) as s:
            assert s.backend == "openslide" and s.vendor == "dicom"
            assert s.level_dimensions == ((1024, 768), (512, 384), (256, 192))
            assert s.mpp == pytest.approx(0.25) and s.mpp_source == "vendor"
            assert s.slide_id == "case-7"
            region = np.asarray(s.read_region((300, 200), 0, (256, 300)))[..., :3]
    diff = np.abs(region.astype(int) - tissue_rgb[200:500, 300:556].astype(int))
    assert diff.mean() < 4, diff.mean()  # JPEG quality 90
    with pytest.raises(SlideError):
        open_slide(dicom_slide[0], backend="tiffslide")  # tiffslide reads TIFF only
