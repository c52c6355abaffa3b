"""Native-tile reader (pathfl.slide.native_tiles) against OpenSlide, on the real CMU slide and
on small tifffile pyramids: same pixels for aligned tiles, tiles straddling stored tiles and
tiles over the slide edge; the automatic fallback (and its reason) for what it does not cover;
extraction with --reader native and --reader openslide gives the same features.

Tolerance: JPEG decoders may round differently (IDCT / upsampling), so a region matches when
its mean absolute difference is < 0.5 grey levels and its largest is <= 2. Both readers use
libjpeg-turbo (OpenSlide through openslide-bin, the native reader through imagecodecs) and
OpenJPEG, and on this machine every comparison is exact."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from slides import aperio_description, synthetic_tissue, write_ome_tiff, write_tiled_tiff

from pathfl.features.dataset import TileBatch, TileDataset, native_support
from pathfl.features.options import ExtractOptions
from pathfl.features.pipeline import extract
from pathfl.features.plan import make_plan
from pathfl.slide import open_slide
from pathfl.slide.native_tiles import (
    NativeUnsupportedError,
    level_positions,
    open_native_level,
)
from pathfl.tiling import GridParams, SlideJob, TileConfig, run_batch

MEAN_TOL, MAX_TOL = 0.5, 2
TILE = 224


def assert_same_pixels(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert got.shape == ref.shape, what
    assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL, (what, diff.mean(), diff.max())


def compare(
    path: Path,
    level: int,
    xys_l0: list[tuple[int, int]],
    size: int = TILE,
    backend: str = "openslide",
) -> None:
    """Native regions at ``level`` vs the backend's ``read_region`` (white outside the slide)."""
    with open_slide(path, backend=backend) as slide:
        ds = slide.level_downsamples[level]
        native = open_native_level(path, slide.level_dimensions[level])
        with native:
            got = native.read_regions(level_positions(np.array(xys_l0), (ds, ds)), (size, size))
        for xy, region in zip(xys_l0, got, strict=True):
            ref = slide.read_region_array(xy, level, (size, size))
            assert_same_pixels(region, ref, f"{path.name} level {level} at {xy}")


def test_cmu_slide_aligned_straddling_and_edge_tiles(cmu_slide) -> None:
    """CMU-1-Small-Region: 2220 x 2967 px in 240-px JPEG tiles (Aperio "JPEG/RGB": RGB
    components, shared JPEGTables)."""
    with open_native_level(cmu_slide, (2220, 2967)) as native:
        assert native.layout.codec == "jpeg" and native.layout.rgb_jpeg
        assert native.layout.tables and (native.layout.tile_w, native.layout.tile_h) == (240, 240)
    aligned = [(0, 0), (240, 480), (1200, 1440)]
    straddling = [(100, 130), (896, 224), (1000, 2000)]  # over 4 stored tiles each
    edge = [(2100, 2900), (2200, 100), (1996, 2743), (-10, -5)]  # partly outside: white
    compare(cmu_slide, 0, aligned + straddling + edge)


def test_cmu_slide_is_not_decoded_as_ycbcr(cmu_slide) -> None:
    """The colour space matters: decoding Aperio's RGB JPEG as YCbCr (what a plain JPEG
    decoder does) is far off, so the comparison above can fail."""
    import imagecodecs

    with open_native_level(cmu_slide, (2220, 2967)) as native:
        right = native.decode(5)
        wrong = imagecodecs.jpeg8_decode(native.raw(5), tables=native.layout.tables)
    assert np.abs(right.astype(int) - wrong).mean() > 10


def test_spliced_stream_decodes_like_the_tables(cmu_slide, tmp_path) -> None:
    """The stand-alone stream the GPU decoder gets (tables spliced in, Adobe RGB marker)
    decodes to the same pixels with torchvision's CPU decoder."""
    from torchvision.io import decode_jpeg

    ycbcr = write_tiled_tiff(tmp_path / "y.tif", synthetic_tissue(300, 300, 4), mpp=0.5, levels=1)
    for path, dim in ((cmu_slide, (2220, 2967)), (ycbcr, (300, 300))):
        with open_native_level(path, dim) as native:
            for i in (0, 3):
                stream = bytearray(native.complete_jpeg(native.raw(i)))
                chw = decode_jpeg(torch.frombuffer(stream, dtype=torch.uint8))
                assert_same_pixels(chw.permute(1, 2, 0).numpy(), native.decode(i), str(path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_cuda_decode_matches_cpu(cmu_slide) -> None:  # pragma: no cover - GPU machines only
    xys = np.array([(0, 0), (100, 130), (2100, 2900)])
    with open_native_level(cmu_slide, (2220, 2967)) as native:
        cpu = native.read_regions(xys, (TILE, TILE))
        gpu = native.read_regions(xys, (TILE, TILE), device=torch.device("cuda"))
    diff = np.abs(gpu.cpu().numpy().astype(int) - cpu)
    assert diff.mean() < 1.0 and diff.max() <= 16  # nvJPEG's IDCT/upsampling differ a little


def test_synthetic_pyramid_levels_0_and_1(tmp_path) -> None:
    """tifffile pyramid, 256-px JPEG (YCbCr) tiles, two levels (downsample exactly 2)."""
    path = write_tiled_tiff(tmp_path / "p.tif", synthetic_tissue(700, 900, 1), mpp=0.5, levels=2)
    compare(path, 0, [(0, 0), (256, 256), (100, 200), (800, 600)], size=128)
    compare(path, 1, [(0, 0), (256, 128), (600, 400)], size=128)  # level px (0,0) (128,64) ..


def test_ome_tiff_pyramid_in_subifds(tmp_path) -> None:
    """OME-TIFF with its reduced levels in SubIFDs (which only tiffslide sees)."""
    path = write_ome_tiff(tmp_path / "o.ome.tif", synthetic_tissue(600, 700, 3), mpp=0.5)
    for level in (0, 1, 2):
        compare(path, level, [(0, 0), (256, 128), (500, 400)], size=100, backend="tiffslide")


def test_aperio_jpeg2000_rgb(tmp_path) -> None:
    """Aperio JPEG 2000 with RGB components (compression 33005), through OpenSlide's aperio
    driver."""
    rgb = synthetic_tissue(500, 600, 2)
    desc = aperio_description(600, 500, mpp=0.5, app_mag=20, tile=256)
    path = tmp_path / "j2k.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            rgb,
            tile=(256, 256),
            photometric="rgb",
            compression=33005,
            description=desc,
            metadata=None,
        )
    with open_native_level(path, (600, 500)) as native:
        assert native.layout.codec == "jpeg2000"
    compare(path, 0, [(0, 0), (100, 200), (500, 400)], size=128)


def test_plain_jpeg2000_matches_tiffslide(tmp_path) -> None:
    """JPEG 2000 tiles (compression 34712), which OpenSlide does not read: against tiffslide."""
    from pathfl.slide.tiffslide_backend import TiffSlideSlide

    path = tmp_path / "j2k.tif"
    rgb = synthetic_tissue(400, 500, 7)
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="jpeg2000")
    xys = [(0, 0), (200, 150), (400, 300)]
    with TiffSlideSlide(path, mpp_override=0.5) as ref, open_native_level(path, (500, 400)) as n:
        assert n.layout.codec == "jpeg2000"
        got = n.read_regions(np.array(xys), (128, 128))
        for xy, region in zip(xys, got, strict=True):
            assert_same_pixels(region, ref.read_region_array(xy, 0, (128, 128)), f"at {xy}")


def test_fallback_reasons(tmp_path) -> None:
    """What the reader does not cover says why: another compression, an untiled level, tile
    corners between level pixels, another vendor's layout."""
    zlib = write_tiled_tiff(tmp_path / "z.tif", synthetic_tissue(300, 300, 5), mpp=0.5, jpeg=False)
    with pytest.raises(NativeUnsupportedError, match=r"ADOBE_DEFLATE \(8\) is not JPEG"):
        open_native_level(zlib, (300, 300))
    with pytest.raises(NativeUnsupportedError, match="no tiled TIFF page of 123x45"):
        open_native_level(zlib, (123, 45))
    with pytest.raises(NativeUnsupportedError, match="between pixels"):
        level_positions(np.array([[0, 0], [5, 8]]), (4.0003, 4.0003))
    attrs = {"level_dim": [300, 300], "downsample": [1.0, 1.0]}
    attrs |= {"level0_width": 300, "level0_height": 300}
    assert "not JPEG" in native_support(zlib, attrs, np.zeros((1, 2)))
    assert "assembled by OpenSlide" in native_support(zlib, {**attrs, "vendor": "ventana"}, [])
    bad = {**attrs, "level_dim": [150, 150]}  # inconsistent with level 0 / downsample
    assert "not level 0 / downsample" in native_support(zlib, bad, np.zeros((1, 2)))


@pytest.fixture(scope="module")
def cmu_tiles(cmu_slide, tmp_path_factory) -> Path:
    tiles = tmp_path_factory.mktemp("tiles")
    config = TileConfig(grid=GridParams(target_mpp=0.5, tile_px=TILE))
    run_batch([SlideJob("cmu", cmu_slide)], tiles, config)
    return tiles


def test_loader_returns_whole_native_batches(cmu_tiles, tmp_path) -> None:
    plan = make_plan(
        cmu_tiles,
        tmp_path,
        encoder_name="x",
        weights_sha256="",
        transform_for=lambda attrs: (TILE, {}),
    )
    (job,) = plan.jobs
    assert job.native
    ds = TileDataset(plan.jobs)
    batch = ds.__getitems__(list(range(8)))
    assert isinstance(batch, TileBatch) and batch.imgs.shape == (8, 3, TILE, TILE)
    per_tile = torch.stack([ds[i][0] for i in range(8)])  # the slide backend, tile by tile
    assert_same_pixels(batch.imgs.numpy(), per_tile.numpy(), "batch vs per tile")
    ds.close()
    # read 256 px, resized to 224: torch's uint8 bilinear vs PIL's, within a grey level
    ds = TileDataset([dataclasses.replace(job, read_size=256)])
    batch = ds.__getitems__(list(range(16)))
    per_tile = torch.stack([ds[i][0] for i in range(16)])
    assert isinstance(batch, TileBatch) and batch.imgs.shape == (16, 3, TILE, TILE)
    assert_same_pixels(batch.imgs.numpy(), per_tile.numpy(), "resized batch vs per tile")
    ds.close()


def test_extraction_native_and_openslide_give_the_same_features(cmu_tiles, tmp_path, caplog):
    feats = {}
    for reader in ("native", "openslide"):
        opts = ExtractOptions(reader=reader, workers=0, batch_size=32, threads=1)
        (row,) = extract(cmu_tiles, tmp_path / reader, options=opts)
        assert row.status == "ok", row.error
        with h5py.File(row.path) as f:
            feats[reader] = (f["features"][:], f["coords"][:], f.attrs["fingerprint"])
            assert f.attrs["tile_reader"] == ("native" if reader == "native" else "openslide")
    (fa, ca, pa), (fb, cb, pb) = feats["native"], feats["openslide"]
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-4)
    assert pa == pb  # the reader is not part of the fingerprint


def test_reader_native_refuses_and_auto_falls_back(tmp_path, caplog) -> None:
    zlib = write_tiled_tiff(tmp_path / "z.tif", synthetic_tissue(512, 512, 6), mpp=0.5, jpeg=False)
    config = TileConfig(grid=GridParams(target_mpp=0.5, tile_px=64, min_tissue_fraction=0.0))
    run_batch([SlideJob("z", zlib)], tmp_path / "tiles", config)
    opts = ExtractOptions(reader="native", workers=0, batch_size=64, threads=1)
    (row,) = extract(tmp_path / "tiles", tmp_path / "out", options=opts)
    assert row.status == "failed" and "--reader native cannot read it" in row.error
    assert "not JPEG" in row.error
    with caplog.at_level(logging.INFO, logger="pathfl.features.plan"):
        opts.reader = "auto"
        (row,) = extract(tmp_path / "tiles", tmp_path / "out", options=opts)
    assert row.status == "ok" and row.n_tiles > 0
    said = [r.getMessage() for r in caplog.records if "not natively" in r.getMessage()]
    assert len(said) == 1 and "not JPEG" in said[0]
