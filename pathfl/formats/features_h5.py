"""The features file ``OUT/features/<slide_id>.h5`` (see DESIGN.md): schema, writer, reader.

Datasets ``features`` float32 (N, D) — or float16 with ``pathfl extract --dtype float16`` —
and ``coords`` int64 (N, 2) in the same row order, plus ``failed_coords`` int64 (M, 2), the
tiles that could not be decoded; with ``pathfl extract --stain-augment K`` also
``features_aug`` (N, K, D), K HED-jittered copies of each row (training-time augmentation; the
``features`` dataset stays unaugmented, and readers that only know ``features``/``coords``, such
as CLAM's and TRIDENT's, ignore it). Root attrs: every attr of the coords file plus the encoder's
(:data:`ENCODER_ATTRS`). Written to a hidden temporary file in chunks and renamed only when
complete (:class:`FeaturesWriter`, or :func:`write_features` for arrays already in memory)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from pathfl.formats.hdf5 import FormatFileError, open_for_reading, plain_attrs
from pathfl.io import atomic_path

logger = logging.getLogger(__name__)

FEATURES = "features"
COORDS = "coords"
FAILED_COORDS = "failed_coords"
FEATURES_AUG = "features_aug"
#: storage dtypes of the ``features`` dataset (DESIGN: float32, float16 optional)
FEATURE_DTYPES = ("float32", "float16")
#: attrs the extract stage adds to those of the coords file
ENCODER_ATTRS = (
    "encoder",
    "weights_sha256",
    "feature_dim",
    "transform",
    "precision",
    "fingerprint",
    "tiling_fingerprint",
    "n_tiles",
    "n_tiles_coords",
    "n_tiles_failed",
    "extract_pathfl_version",
    "stain_norm",
    "stain_ref_sha256",
    "stain_augment_k",
)
#: rows per HDF5 chunk
CHUNK_ROWS = 256


class FeaturesFileError(FormatFileError):
    """A features file is missing, unreadable, or breaks the schema."""


class FeaturesFile(NamedTuple):
    """A features file as read. ``features`` keep their stored dtype (float32 or float16; any
    other float type becomes float32); ``attrs`` are plain Python values."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]


class FeaturesHeader(NamedTuple):
    """What a features file says about itself without reading its rows: root attrs, and the
    shape and dtype of its ``features`` dataset (None when it has none)."""

    attrs: dict[str, Any]
    shape: tuple[int, ...] | None
    dtype: str | None

    @property
    def feature_dim(self) -> int | None:
        return int(self.shape[1]) if self.shape is not None and len(self.shape) == 2 else None


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All root attrs of a features file as plain Python values."""
    return read_header(path).attrs


def read_header(path: str | os.PathLike[str]) -> FeaturesHeader:
    """Root attrs and the ``features`` dataset's shape and dtype; raises
    :class:`FeaturesFileError` for a file that is not readable HDF5."""
    with open_for_reading(path, error=FeaturesFileError, what="features") as f:
        ds = f.get(FEATURES)
        if isinstance(ds, h5py.Dataset):
            return FeaturesHeader(plain_attrs(f), tuple(ds.shape), str(ds.dtype))
        return FeaturesHeader(plain_attrs(f), None, None)


def read_features(path: str | os.PathLike[str]) -> FeaturesFile:
    """``(features (N, D), coords int64 (N, 2), attrs)`` of a features file, checked against
    the schema; raises :class:`FeaturesFileError` naming the file."""
    with open_for_reading(path, error=FeaturesFileError, what="features") as f:
        if FEATURES not in f or COORDS not in f:
            raise FeaturesFileError(path, f"needs datasets {FEATURES!r} and {COORDS!r}")
        feats = np.asarray(f[FEATURES][()])
        coords = np.asarray(f[COORDS][()]).astype(np.int64)
        attrs = plain_attrs(f)
    if feats.dtype not in (np.float32, np.float16):
        feats = feats.astype(np.float32)
    if feats.ndim != 2 or coords.shape != (feats.shape[0], 2):
        raise FeaturesFileError(
            path, f"features {feats.shape} and coords {coords.shape} do not match (N,D)/(N,2)"
        )
    return FeaturesFile(feats, coords, attrs)


def read_augmented(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The ``features_aug`` dataset (N, K, D) of a features file, or None when it has none."""
    with open_for_reading(path, error=FeaturesFileError, what="features") as f:
        ds = f.get(FEATURES_AUG)
        return np.asarray(ds[()]) if isinstance(ds, h5py.Dataset) else None


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
        n_aug: int = 0,
    ) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"features dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        self.final = Path(final)
        self.feature_dim = feature_dim
        self.dtype = np.dtype(dtype)
        self._stack = contextlib.ExitStack()
        # atomic_path gives the temporary file the usual umask-based mode
        self._tmp = self._stack.enter_context(atomic_path(self.final, suffix=".h5"))
        self._file = h5py.File(self._tmp, "w")
        chunk = max(1, min(CHUNK_ROWS, n_max))
        self._feats = self._file.create_dataset(
            FEATURES, shape=(0, feature_dim), maxshape=(None, feature_dim),
            dtype=self.dtype, chunks=(chunk, feature_dim),
        )  # fmt: skip
        self._coords = self._file.create_dataset(
            COORDS, shape=(0, 2), maxshape=(None, 2), dtype="int64", chunks=(chunk, 2)
        )
        self._aug = None
        if n_aug > 0:
            self._aug = self._file.create_dataset(
                FEATURES_AUG, shape=(0, n_aug, feature_dim),
                maxshape=(None, n_aug, feature_dim), dtype=self.dtype,
                chunks=(max(1, chunk // n_aug), n_aug, feature_dim),
            )  # fmt: skip
        self._failed: list[np.ndarray] = []
        self.n_rows = 0

    def _check_range(self, features: np.ndarray) -> None:
        if self.dtype == np.float16 and not np.all(np.abs(features) <= np.finfo(np.float16).max):
            raise OverflowError(
                f"{self.final}: features beyond the float16 range (|x| up to "
                f"{float(np.nanmax(np.abs(features))):.4g} or NaN); use --dtype float32"
            )

    def append(
        self, features: np.ndarray, coords: np.ndarray, augmented: np.ndarray | None = None
    ) -> None:
        """Add rows (and their (n, K, D) augmented copies when the file has them); raises
        ``OverflowError`` for values a float16 file cannot hold."""
        n = features.shape[0]
        if n == 0:
            return
        if features.shape[1] != self.feature_dim or coords.shape != (n, 2):
            raise ValueError(f"bad batch shapes {features.shape}, {coords.shape}")
        if (self._aug is None) != (augmented is None) or (
            augmented is not None and augmented.shape != (n, *self._aug.shape[1:])
        ):
            raise ValueError(f"augmented rows do not match the file ({self._aug!r})")
        self._check_range(features)
        if augmented is not None and self._aug is not None:
            self._check_range(augmented)
            self._aug.resize(self.n_rows + n, axis=0)
            self._aug[self.n_rows :] = augmented.astype(self.dtype, copy=False)
        self._feats.resize(self.n_rows + n, axis=0)
        self._coords.resize(self.n_rows + n, axis=0)
        self._feats[self.n_rows :] = features.astype(self.dtype, copy=False)
        self._coords[self.n_rows :] = coords.astype(np.int64, copy=False)
        self.n_rows += n

    def add_failed(self, coords: np.ndarray) -> None:
        """Record tiles that could not be decoded (the ``failed_coords`` dataset)."""
        if len(coords):
            self._failed.append(np.asarray(coords, dtype=np.int64).reshape(-1, 2))

    @property
    def n_failed(self) -> int:
        return int(sum(len(c) for c in self._failed))

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Write ``attrs`` (dicts and lists of strings as JSON, None as "") and rename the
        file onto its final path."""
        failed = np.concatenate(self._failed) if self._failed else np.zeros((0, 2), np.int64)
        self._file.create_dataset(FAILED_COORDS, data=failed, dtype="int64")
        for key, value in attrs.items():
            self._file.attrs[key] = _attr_value(value)
        self._file.close()
        self._stack.close()  # renames the temporary file onto self.final
        return self.final

    def abort(self) -> None:
        """Close and remove the temporary file; ``final`` is left as it was."""
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


def write_features(
    path: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    attrs: dict[str, Any],
) -> Path:
    """Write a whole features file at once (temp file + rename), stored as float16 if
    ``features`` are float16 and as float32 otherwise."""
    features = np.asarray(features)
    dtype = "float16" if features.dtype == np.float16 else "float32"
    with FeaturesWriter(
        path, feature_dim=int(features.shape[1]), n_max=len(features), dtype=dtype
    ) as w:
        w.append(features, np.asarray(coords))
        return w.commit(attrs)
