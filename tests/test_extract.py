"""`pathfl extract` pipeline on real (synthetic tifffile) slides and real HDF5 files: schema and
attrs, reproducibility across batch sizes/workers, corrupt tiles, resume, shards, the CMU slide."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from slides import synthetic_tissue, write_tiled_tiff

from pathfl.config import ConfigError
from pathfl.features.encoders import create_encoder
from pathfl.features.inference import InferenceRunner
from pathfl.features.options import ExtractOptions
from pathfl.features.pipeline import extract, manifest_path
from pathfl.formats.coords_h5 import REQUIRED_ATTRS, write_coords
from pathfl.formats.features_h5 import read_features
from pathfl.io import Manifest
from pathfl.slide import open_slide

TILE = 64  # small tiles keep the CPU tests fast; the CMU test uses the real 224


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One encoder thread: on a shared 2-core CI box OpenMP spin-waits make 2 threads ~10x
    slower than 1; results are identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_coords_file(
    path: Path,
    slide: Path,
    coords: np.ndarray,
    *,
    patch_level: int = 0,
    read_size: int = TILE,
    tile_size: int = TILE,
    fingerprint: str = "tiling-fp-1",
) -> dict:
    """A coords file per DESIGN (all CLAM/TRIDENT/pathfl attrs) for a synthetic slide."""
    ds = 2.0**patch_level
    attrs = {
        "patch_size": read_size,
        "patch_level": patch_level,
        "downsample": np.array([ds, ds]),
        "level_dim": np.array([512, 512]),
        "downsampled_level_dim": np.array([512, 512]),
        "name": path.stem,
        "patch_size_level0": int(read_size * ds),
        "level0_magnification": 20,
        "target_magnification": 20,
        "overlap": 0,
        "level0_width": 512,
        "level0_height": 512,
        "mpp_level0": 0.5,
        "target_mpp": 0.5 * ds * read_size / tile_size,
        "tile_size": tile_size,
        "read_size": read_size,
        "backend": "openslide",
        "tissue_params": json.dumps({"min_tissue": 0.25}),
        "pathfl_version": "test",
        "fingerprint": fingerprint,
        "slide_path": str(slide),
    }
    assert set(REQUIRED_ATTRS) <= set(attrs)
    write_coords(path, coords, attrs)
    return attrs


def grid(n_x: int, n_y: int, step: int, offset: int = 0) -> np.ndarray:
    return np.array(
        [(offset + i * step, offset + j * step) for j in range(n_y) for i in range(n_x)]
    )


def make_cohort(root: Path, n_slides: int = 2, *, n_side: int = 4) -> Path:
    """``root/tiles/coords/slide{i}.h5`` over 512 px JPEG-tiled TIFFs; slide 1 is read at
    level 1 and up-sized (exercises resizing)."""
    tiles = root / "tiles"
    for i in range(n_slides):
        slide = write_tiled_tiff(
            root / f"slide{i}.tif", synthetic_tissue(512, 512, seed=i), mpp=0.5, levels=2
        )
        if i == 1:
            coords = grid(n_side, n_side, 2 * TILE // 2, offset=8)
            write_coords_file(
                tiles / "coords" / f"slide{i}.h5", slide, coords, patch_level=1, read_size=TILE // 2
            )
        else:
            write_coords_file(
                tiles / "coords" / f"slide{i}.h5", slide, grid(n_side, n_side, 96, 10)
            )
    return tiles


def run(tiles: Path, out: Path, **kw) -> dict[str, str]:
    opts = ExtractOptions(**{"workers": 0, "batch_size": 8, **kw})
    rows = extract(tiles, out, options=opts)
    return {r.slide_id: r.status for r in rows}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def baseline(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert run(cohort, out) == {"slide0": "ok", "slide1": "ok"}
    return out


def test_schema_attrs_and_values(cohort, baseline) -> None:
    for sid in ("slide0", "slide1"):
        path = baseline / "features" / f"{sid}.h5"
        feats, coords, attrs = read_features(path)
        with h5py.File(cohort / "coords" / f"{sid}.h5") as f:
            c_coords = f["coords"][:]
            c_attrs = dict(f.attrs)
        assert feats.dtype == np.float32 and feats.shape == (len(c_coords), 1280)
        np.testing.assert_array_equal(coords, c_coords)  # same rows, same order
        for k, v in c_attrs.items():  # every coords attr copied (fingerprint is redefined)
            if k != "fingerprint":
                np.testing.assert_equal(attrs[k], np.asarray(v).tolist(), err_msg=k)
        assert attrs["tiling_fingerprint"] == c_attrs["fingerprint"] != attrs["fingerprint"]
        assert attrs["encoder"] == "mobilenet-v2" and attrs["feature_dim"] == 1280
        assert len(attrs["weights_sha256"]) == 64
        transform = json.loads(attrs["transform"])
        assert transform["resize"] == TILE and transform["mean"] == [0.485, 0.456, 0.406]
        assert attrs["n_tiles"] == len(c_coords) and attrs["n_tiles_failed"] == 0
        with h5py.File(path) as f:  # the CLAM/TRIDENT way
            assert f["features"][:].shape == feats.shape and f["coords"][:].shape == coords.shape
            assert f["features"].chunks is not None
    man = Manifest.load(manifest_path(baseline, None))
    assert {k: r["status"] for k, r in man.rows.items()} == {"slide0": "ok", "slide1": "ok"}
    assert man.rows["slide0"]["n_tiles"] == "16"
    assert not list((baseline / "features").glob(".*tmp"))


def test_features_match_an_independent_read(cohort, baseline) -> None:
    """Recompute two tiles by hand (read_region → resize → normalise → trunk)."""
    enc = create_encoder("mobilenet-v2")
    runner = InferenceRunner(enc)
    for sid, level, read_px in (("slide0", 0, TILE), ("slide1", 1, TILE // 2)):
        feats, coords, _ = read_features(baseline / "features" / f"{sid}.h5")
        with open_slide(cohort.parent / f"{sid}.tif") as slide:
            imgs = []
            for x, y in coords[[0, -1]]:
                img = slide.read_region((int(x), int(y)), level, (read_px, read_px))
                imgs.append(np.array(img.resize((TILE, TILE), Image.Resampling.BILINEAR)))
        batch = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
        np.testing.assert_allclose(runner(batch).numpy(), feats[[0, -1]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (5, 2), (64, 1)])
def test_same_features_across_batch_sizes_and_workers(
    cohort, baseline, tmp_path, batch_size, workers
) -> None:
    assert run(cohort, tmp_path, batch_size=batch_size, workers=workers) == {
        "slide0": "ok",
        "slide1": "ok",
    }
    for sid in ("slide0", "slide1"):
        a, ca, attrs_a = read_features(baseline / "features" / f"{sid}.h5")
        b, cb, attrs_b = read_features(tmp_path / "features" / f"{sid}.h5")
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert attrs_a["fingerprint"] == attrs_b["fingerprint"]


def test_rerun_skips_and_mismatch_needs_overwrite(tmp_path) -> None:
    tiles = make_cohort(tmp_path, n_slides=1, n_side=2)
    out = tmp_path / "out"
    assert run(tiles, out) == {"slide0": "ok"}
    feats_path = out / "features" / "slide0.h5"
    mtime = feats_path.stat().st_mtime_ns
    # what a SIGKILL during a manifest rewrite or a slide leaves behind is removed on rerun
    stale = [
        out / "features" / ".manifest.csv.k1ll3d.csv.tmp",
        out / "features" / ".slide0.h5.x.h5.tmp",
    ]
    for p in stale:
        p.write_text("partial")
    assert run(tiles, out) == {"slide0": "skipped"}
    assert not any(p.exists() for p in stale)
    assert feats_path.stat().st_mtime_ns == mtime
    assert run(tiles, out, precision="bf16") == {"slide0": "failed"}  # other numerics
    # re-tiled with other parameters → other tiling fingerprint
    with h5py.File(tiles / "coords" / "slide0.h5", "r+") as f:
        f.attrs["fingerprint"] = "tiling-fp-2"
    rows = extract(tiles, out, options=ExtractOptions(workers=0))
    assert rows[0].status == "failed" and "--overwrite" in rows[0].error
    assert feats_path.stat().st_mtime_ns == mtime  # refused: untouched
    assert run(tiles, out, overwrite=True) == {"slide0": "ok"}
    assert read_features(feats_path)[2]["tiling_fingerprint"] == "tiling-fp-2"


def test_float16_storage_halves_the_file_and_is_its_own_fingerprint(cohort, baseline, tmp_path):
    """--dtype float16: the features dataset is float16, equal to the float32 run up to
    float16 rounding, the training loader reads it, and a float32 file of the same slide is a
    fingerprint mismatch (not mixed silently). Out-of-range values fail that slide."""
    from pathfl.formats.features_h5 import FeaturesWriter

    out = tmp_path / "out16"
    assert run(cohort, out, dtype="float16") == {"slide0": "ok", "slide1": "ok"}
    for sid in ("slide0", "slide1"):
        with h5py.File(out / "features" / f"{sid}.h5", "r") as f:
            assert f["features"].dtype == np.float16
            half = f["features"][:].astype(np.float32)
            fp16_fingerprint = f.attrs["fingerprint"]
            half_bytes = f["features"].id.get_storage_size()
        with h5py.File(baseline / "features" / f"{sid}.h5", "r") as f:
            assert f["features"].dtype == np.float32
            assert half_bytes * 2 == f["features"].id.get_storage_size()
        full, coords, attrs = read_features(baseline / "features" / f"{sid}.h5")
        np.testing.assert_allclose(half, full, rtol=1e-3, atol=1e-4)
        assert fp16_fingerprint != attrs["fingerprint"]
        feats, coords16, _ = read_features(out / "features" / f"{sid}.h5")
        assert feats.dtype == np.float16 and np.array_equal(coords16, coords)
    # same output folder, other dtype: refused without --overwrite, untouched
    assert run(cohort, out) == {"slide0": "failed", "slide1": "failed"}
    assert run(cohort, out, dtype="float16") == {"slide0": "skipped", "slide1": "skipped"}
    with pytest.raises(ConfigError, match="--dtype"):
        run(cohort, out, dtype="bfloat16")
    w = FeaturesWriter(tmp_path / "big.h5", feature_dim=2, n_max=4, dtype="float16")
    with pytest.raises(OverflowError, match="float16 range"):
        w.append(np.array([[1.0, 7e4]], np.float32), np.zeros((1, 2), np.int64))
    w.abort()
    assert not (tmp_path / "big.h5").exists()


def test_shards_split_the_cohort_and_a_plain_run_completes_it(tmp_path) -> None:
    tiles = make_cohort(tmp_path, n_slides=3, n_side=1)
    out = tmp_path / "out"
    s0 = run(tiles, out, shard=(0, 2))
    s1 = run(tiles, out, shard=(1, 2))
    assert set(s0).isdisjoint(s1) and set(s0) | set(s1) == {"slide0", "slide1", "slide2"}
    assert manifest_path(out, (0, 2)).is_file() and manifest_path(out, (1, 2)).is_file()
    (out / "features" / "slide1.h5").unlink()  # e.g. one array task died
    assert run(tiles, out) == {"slide0": "skipped", "slide1": "ok", "slide2": "skipped"}


def corrupt_one_jpeg_tile(path: Path, tile_index: int) -> None:
    """Overwrite the bytes of one JPEG tile of level 0 with zeros."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        off, n = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\x00" * n)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_is_skipped_and_counted(tmp_path, backend) -> None:
    slide = write_tiled_tiff(
        tmp_path / "bad.tif", synthetic_tissue(512, 512, seed=3), mpp=0.5, levels=1
    )
    corrupt_one_jpeg_tile(slide, 1)  # the TIFF tile covering x 256..511, y 0..255
    coords = grid(4, 4, 128, 16)  # 64 px tiles, 4 of them inside the corrupt TIFF tile
    write_coords_file(tmp_path / "tiles" / "coords" / "bad.h5", slide, coords)
    with h5py.File(tmp_path / "tiles" / "coords" / "bad.h5", "r+") as f:
        f.attrs["backend"] = backend
    out = tmp_path / "out"
    assert run(tmp_path / "tiles", out, workers=1) == {"bad": "ok"}
    feats, got, attrs = read_features(out / "features" / "bad.h5")
    in_bad = (coords[:, 0] >= 256) & (coords[:, 1] < 256)
    np.testing.assert_array_equal(got, coords[~in_bad])  # all the others, in order
    assert feats.shape == (12, 1280) and np.isfinite(feats).all()
    assert attrs["n_tiles_failed"] == 4 and attrs["n_tiles_coords"] == 16
    with h5py.File(out / "features" / "bad.h5") as f:
        np.testing.assert_array_equal(f["failed_coords"][:], coords[in_bad])
    row = Manifest.load(manifest_path(out, None)).rows["bad"]
    assert row["n_tiles"] == "12" and "4 unreadable tile(s)" in row["error"]


def test_missing_slide_fails_that_slide_only(tmp_path) -> None:
    tiles = make_cohort(tmp_path, n_slides=2, n_side=1)
    (tmp_path / "slide0.tif").rename(tmp_path / "moved.tif")
    rows = {
        r.slide_id: r for r in extract(tiles, tmp_path / "out", options=ExtractOptions(workers=0))
    }
    assert rows["slide0"].status == "failed" and "--slide-dir" in rows["slide0"].error
    assert rows["slide1"].status == "ok"
    assert not (tmp_path / "out" / "features" / "slide0.h5").exists()
    # found again through --slide-dir
    (tmp_path / "moved.tif").rename(tmp_path / "elsewhere.tif")
    (tmp_path / "dir").mkdir()
    (tmp_path / "elsewhere.tif").rename(tmp_path / "dir" / "slide0.tif")
    assert run(tiles, tmp_path / "out", slide_dir=tmp_path / "dir")["slide0"] == "ok"


@pytest.mark.slow
def test_cmu_slide_one_row_per_tile(cmu_slide, tmp_path) -> None:
    from pathfl.tiling import GridParams, SlideJob, TileConfig, run_batch

    tiles = tmp_path / "tiles"
    run_batch(
        [SlideJob("CMU-1-Small-Region", cmu_slide)],
        tiles,
        TileConfig(grid=GridParams(target_mpp=0.5, tile_px=224)),
    )
    coords_path = tiles / "coords" / "CMU-1-Small-Region.h5"
    with h5py.File(coords_path) as f:
        c_coords = f["coords"][:]
    assert len(c_coords) > 10
    assert run(tiles, tmp_path / "out", batch_size=32, workers=1) == {"CMU-1-Small-Region": "ok"}
    feats, coords, attrs = read_features(tmp_path / "out" / "features" / "CMU-1-Small-Region.h5")
    assert feats.shape == (len(c_coords), 1280)
    np.testing.assert_array_equal(coords, c_coords)
    assert attrs["tile_size"] == 224 and attrs["encoder"] == "mobilenet-v2"
    assert feats.std(axis=0).mean() > 0  # tiles differ


def test_parse_shard_and_bad_files(tmp_path) -> None:
    from pathfl.config import ConfigError
    from pathfl.features.plan import parse_shard, select_shard
    from pathfl.formats.features_h5 import FeaturesFileError

    assert parse_shard("0/4") == (0, 4) and parse_shard(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    paths = [Path(f"s{i}.h5") for i in range(7)]
    shards = [select_shard(paths, (k, 3)) for k in range(3)]
    assert sorted(p for s in shards for p in s) == sorted(paths)
    assert [len(s) for s in shards] == [3, 2, 2]
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(FeaturesFileError, match=r"junk\.h5"):
        read_features(junk)
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
    with pytest.raises(FeaturesFileError, match="coords"):
        read_features(tmp_path / "half.h5")


def test_tiles_far_from_the_encoders_input_size_warn(tmp_path, caplog) -> None:
    """64-px tiles fed to MobileNetV2 (native 224 px): the slide is encoded (a warning, not an
    error), the log and the manifest row say so; sizes within 2x of 224 px say nothing."""
    from pathfl.features.encoders import EncoderSpec
    from pathfl.features.transform import tile_size_note

    tiles = make_cohort(tmp_path, n_slides=1, n_side=2)
    with caplog.at_level("WARNING", logger="pathfl.features.pipeline"):
        assert run(tiles, tmp_path / "out") == {"slide0": "ok"}
    assert any(
        "1 slide(s): warning: 64-px tiles fed as they are to encoder mobilenet-v2" in r.message
        and "native input is 224 px" in r.message
        for r in caplog.records
    )
    row = Manifest.load(manifest_path(tmp_path / "out", None)).rows["slide0"]
    assert row["status"] == "ok" and "64-px tiles" in row["error"]
    assert "--tile-px 224" in row["error"]  # the option of `pathfl tile`

    spec = EncoderSpec("vit", 768, 224, (0.5,) * 3, (0.5,) * 3, fixed_input_px=True)
    assert [bool(tile_size_note(spec, px)) for px in (16, 111, 112, 224, 448, 449)] == [
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert "16-px tiles resized to 224 px for encoder vit" in tile_size_note(spec, 16)
