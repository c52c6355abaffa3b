"""Features files (``OUT/features/<slide_id>.h5``, DESIGN.md): datasets ``features`` float32
(N, D) and ``coords`` int64 (N, 2) in the same row order, every attr of the coords file plus the
encoder's. Written to a hidden temporary file in chunks and renamed only when complete."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pathfl.io import atomic_path, sha256_json

logger = logging.getLogger(__name__)

CHUNK_ROWS = 256


class FeaturesFileError(Exception):
    """A features or coords file is missing, unreadable, or breaks the DESIGN schema."""


def _py(value: Any) -> Any:
    """HDF5 attr value → plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_py(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All root attrs of an HDF5 file as plain Python values."""
    try:
        with h5py.File(path, "r") as f:
            return {k: _py(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise FeaturesFileError(f"{path}: not a readable HDF5 file ({e})") from e


def read_coords_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """``coords`` (N, 2) int64 and attrs of a tile-stage coords file, checked against DESIGN."""
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise FeaturesFileError(f"{path}: no 'coords' dataset")
            coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
            attrs = {k: _py(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise FeaturesFileError(f"{path}: not a readable HDF5 coords file ({e})") from e
    missing = [k for k in ("patch_level", "read_size", "tile_size", "name") if k not in attrs]
    if missing:
        raise FeaturesFileError(f"{path}: coords file lacks attr(s) {', '.join(missing)}")
    return coords, attrs


def read_features(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(features float32 (N, D), coords int64 (N, 2), attrs)`` of a features file."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or "coords" not in f:
                raise FeaturesFileError(f"{path}: needs datasets 'features' and 'coords'")
            feats = np.asarray(f["features"][:], dtype=np.float32)
            coords = np.asarray(f["coords"][:], dtype=np.int64)
            attrs = {k: _py(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise FeaturesFileError(f"{path}: not a readable HDF5 features file ({e})") from e
    if feats.ndim != 2 or coords.shape != (feats.shape[0], 2):
        raise FeaturesFileError(
            f"{path}: features {feats.shape} and coords {coords.shape} do not match (N,D)/(N,2)"
        )
    return feats, coords, attrs


#: storage dtypes of the ``features`` dataset (DESIGN: float32, float16 optional)
FEATURE_DTYPES = ("float32", "float16")


def features_fingerprint(
    *,
    tiling_fingerprint: str,
    encoder: str,
    weights_sha256: str,
    transform: dict[str, Any],
    precision: str,
    dtype: str = "float32",
) -> str:
    """DESIGN: tiling fingerprint + encoder + weights, plus the pixel transform and the compute
    precision (bf16 features differ from fp32 ones by several per cent). A float16 storage
    dtype is part of it too; float32, the default, adds nothing (fingerprints of files written
    before the option existed stay valid)."""
    what = {
        "tiling": tiling_fingerprint,
        "encoder": encoder,
        "weights_sha256": weights_sha256,
        "transform": transform,
        "precision": precision,
    }
    if dtype != "float32":
        what["dtype"] = dtype
    return sha256_json(what)


def _attr_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)) and any(isinstance(v, (str, dict)) for v in value):
        return json.dumps(value)
    return value


class FeaturesWriter:
    """Streams rows into a temporary chunked HDF5 file; :meth:`commit` writes the attrs and
    renames it to ``final``; :meth:`abort` (or an exception) removes it."""

    def __init__(
        self,
        final: str | os.PathLike[str],
        *,
        feature_dim: int,
        n_max: int,
        dtype: str = "float32",
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"features dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        self.final = Path(final)
        self.feature_dim = feature_dim
        self.dtype = np.dtype(dtype)
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.final, suffix=".h5"))
        self._tmp = tmp
        self._file = h5py.File(tmp, "w")
        chunk = max(1, min(CHUNK_ROWS, n_max))
        self._feats = self._file.create_dataset(
            "features", shape=(0, feature_dim), maxshape=(None, feature_dim),
            dtype=self.dtype, chunks=(chunk, feature_dim),
        )  # fmt: skip
        self._coords = self._file.create_dataset(
            "coords", shape=(0, 2), maxshape=(None, 2), dtype="int64", chunks=(chunk, 2)
        )
        self._failed: list[np.ndarray] = []
        self.n_rows = 0

    def append(self, features: np.ndarray, coords: np.ndarray) -> None:
        n = features.shape[0]
        if n == 0:
            return
        if features.shape[1] != self.feature_dim or coords.shape != (n, 2):
            raise ValueError(f"bad batch shapes {features.shape}, {coords.shape}")
        self._feats.resize(self.n_rows + n, axis=0)
        self._coords.resize(self.n_rows + n, axis=0)
        if self.dtype == np.float16 and not np.all(np.abs(features) <= np.finfo(np.float16).max):
            raise OverflowError(
                f"{self.final}: features beyond the float16 range (|x| up to "
                f"{float(np.nanmax(np.abs(features))):.4g} or NaN); use --dtype float32"
            )
        self._feats[self.n_rows :] = features.astype(self.dtype, copy=False)
        self._coords[self.n_rows :] = coords.astype(np.int64, copy=False)
        self.n_rows += n

    def add_failed(self, coords: np.ndarray) -> None:
        if len(coords):
            self._failed.append(np.asarray(coords, dtype=np.int64).reshape(-1, 2))

    @property
    def n_failed(self) -> int:
        return int(sum(len(c) for c in self._failed))

    def commit(self, attrs: dict[str, Any]) -> Path:
        failed = np.concatenate(self._failed) if self._failed else np.zeros((0, 2), np.int64)
        self._file.create_dataset("failed_coords", data=failed, dtype="int64")
        for key, value in attrs.items():
            self._file.attrs[key] = _attr_value(value)
        self._file.close()
        self._make_readable()
        self._stack.close()  # renames the temporary file onto self.final
        return self.final

    def _make_readable(self) -> None:
        """mkstemp creates 0600 files; give the result the usual umask-based mode."""
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(_AbortError):
            # atomic_path sees an exception and removes the temporary file
            self._stack.__exit__(_AbortError, _AbortError(), None)

    def __enter__(self) -> FeaturesWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()


class _AbortError(Exception):
    pass
