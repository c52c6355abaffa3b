"""The file-format modules: round trips, the CLAM/TRIDENT layout, and one clear error naming
the file for every kind of bad file (real HDF5 files on disk)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pathfl.formats import FormatFileError
from pathfl.formats.coords_h5 import (
    CoordsFileError,
    level0_attrs,
    read_coords,
    read_fingerprint,
    tile_geometry,
    write_coords,
)
from pathfl.formats.features_h5 import (
    FeaturesFileError,
    FeaturesWriter,
    read_attrs,
    read_features,
    read_header,
    write_features,
)
from pathfl.survival.synthetic import write_features_h5


def _coords_attrs() -> dict:
    return {
        **level0_attrs(name="s1", tile_px=64, mpp=0.25),
        "level_dim": np.array([512, 256], np.int64),
        "fingerprint": "fp-1",
        "tissue_params": '{"a": 1}',
    }


def test_coords_round_trip_and_clam_layout(tmp_path) -> None:
    path = tmp_path / "coords" / "s1.h5"
    coords = np.array([[0, 0], [64, 0], [128, 64]])
    frac = np.array([0.5, 1.0, 0.25])
    write_coords(path, coords, _coords_attrs(), tissue_fraction=frac)
    got, attrs = read_coords(path)
    assert got.dtype == np.int64 and np.array_equal(got, coords)
    assert attrs["level_dim"] == [512, 256] and attrs["tissue_params"] == '{"a": 1}'
    assert tile_geometry(attrs) == (0, 64, 64) and read_coords(path).geometry.read_size == 64
    assert read_fingerprint(path) == "fp-1" and read_fingerprint(tmp_path / "nope.h5") is None
    with h5py.File(path, "r") as f:  # what CLAM and TRIDENT read
        assert f["coords"].dtype == np.int64 and f["tissue_fraction"].dtype == np.float32
        assert int(f["coords"].attrs["patch_size"]) == 64 == int(f.attrs["patch_size"])
        assert int(f["coords"].attrs["patch_level"]) == 0
    assert not list(path.parent.glob(".*tmp"))


def test_bad_coords_files_name_the_file(tmp_path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CoordsFileError, match=r"junk\.h5: not a readable HDF5 coords file"):
        read_coords(junk)
    with pytest.raises(CoordsFileError, match=r"absent\.h5"):
        read_coords(tmp_path / "absent.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.attrs["name"] = "x"
    with pytest.raises(CoordsFileError, match=r"empty\.h5: no 'coords' dataset"):
        read_coords(tmp_path / "empty.h5")
    attrs = _coords_attrs()
    del attrs["read_size"], attrs["tile_size"]
    write_coords(tmp_path / "few.h5", np.zeros((1, 2)), attrs)
    with pytest.raises(CoordsFileError) as e:
        read_coords(tmp_path / "few.h5")
    assert e.value.path == tmp_path / "few.h5"
    assert e.value.problem == "coords file lacks attr(s) read_size, tile_size"
    assert isinstance(e.value, FormatFileError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_features_round_trip_keeps_the_storage_dtype(tmp_path, dtype) -> None:
    path = tmp_path / "f.h5"
    feats = np.random.default_rng(0).normal(size=(5, 3)).astype(dtype)
    coords = np.arange(10).reshape(5, 2)
    attrs = {"encoder": "e", "transform": {"resize": 64}, "n": None, "tags": ["a", "b"]}
    write_features(path, feats, coords, attrs)
    got, got_coords, got_attrs = read_features(path)
    assert got.dtype == dtype and np.array_equal(got, feats)
    assert got_coords.dtype == np.int64 and np.array_equal(got_coords, coords)
    assert got_attrs == {
        "encoder": "e",
        "transform": '{"resize": 64}',
        "n": "",
        "tags": '["a", "b"]',
    }
    header = read_header(path)
    assert header.feature_dim == 3 and header.shape == (5, 3) and header.dtype == str(got.dtype)
    assert read_attrs(path) == got_attrs
    with h5py.File(path, "r") as f:
        assert set(f) == {"features", "coords", "failed_coords"}
        assert f["features"].chunks is not None and f["failed_coords"].shape == (0, 2)


def test_features_writer_commits_atomically(tmp_path) -> None:
    path = tmp_path / "w.h5"
    with FeaturesWriter(path, feature_dim=2, n_max=10) as w:
        w.append(np.ones((3, 2), np.float32), np.zeros((3, 2), np.int64))
        w.add_failed(np.array([[5, 5]]))
        assert not path.exists()  # still the temporary file
        w.commit({"n_tiles": 3})
    feats, _, attrs = read_features(path)
    assert feats.shape == (3, 2) and attrs["n_tiles"] == 3
    with h5py.File(path, "r") as f:
        assert f["failed_coords"][:].tolist() == [[5, 5]]
    before = path.read_bytes()
    with pytest.raises(RuntimeError), FeaturesWriter(path, feature_dim=2, n_max=1) as w:
        w.append(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64))
        raise RuntimeError("crash mid-slide")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_bad_features_files_name_the_file(tmp_path) -> None:
    path = tmp_path / "good.h5"
    write_features(path, np.zeros((4, 2), np.float32), np.zeros((4, 2)), {})
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:600])  # a copy that stopped half-way
    for bad in (cut, tmp_path / "absent.h5"):
        with pytest.raises(FeaturesFileError, match=rf"{bad.name}: not a readable HDF5"):
            read_features(bad)
        with pytest.raises(FeaturesFileError, match=bad.name):
            read_header(bad)
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["features"] = np.zeros((4, 2), np.float32)
        f["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(FeaturesFileError, match=r"odd\.h5: features \(4, 2\) and coords"):
        read_features(tmp_path / "odd.h5")
    with h5py.File(tmp_path / "half.h5", "w") as f:
        f["features"] = np.zeros((4, 2), np.float64)
    with pytest.raises(FeaturesFileError, match="needs datasets 'features' and 'coords'"):
        read_features(tmp_path / "half.h5")
    assert read_header(tmp_path / "half.h5").dtype == "float64"


def test_synthetic_features_files_are_real_features_files(tmp_path) -> None:
    """The synthetic cohorts write through the same writer: same datasets, the coords attrs
    a level-0 tiling has, and float64 input stored as float32."""
    path = tmp_path / "syn.h5"
    feats = np.random.default_rng(1).normal(size=(6, 4))  # float64
    write_features_h5(path, feats, np.zeros((6, 2)), slide_id="syn", tile_px=112)
    got, _, attrs = read_features(path)
    assert got.dtype == np.float32 and np.allclose(got, feats, atol=1e-6)
    assert tile_geometry(attrs) == (0, 112, 112) and attrs["name"] == "syn"
    assert attrs["feature_dim"] == 4 and attrs["downsample"] == [1.0, 1.0]
    with h5py.File(path, "r") as f:
        assert set(f) == {"features", "coords", "failed_coords"}
