"""What the HDF5 formats share: the error type, opening a file for reading with an error that
names it, and attribute values as plain Python."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np


class FormatFileError(ValueError):
    """A file is missing, unreadable, or breaks its format's schema. ``str()`` is
    ``"<path>: <problem>"``; :attr:`problem` is the part after the path."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def plain(value: Any) -> Any:
    """HDF5 attr value → plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def plain_attrs(node: h5py.HLObject) -> dict[str, Any]:
    """All attrs of an HDF5 file, group or dataset as plain Python values."""
    return {k: plain(v) for k, v in node.attrs.items()}


@contextlib.contextmanager
def open_for_reading(
    path: str | os.PathLike[str], *, error: type[FormatFileError], what: str
) -> Iterator[h5py.File]:
    """``h5py.File(path, "r")``; a file that is absent, not HDF5 or truncated (an ``OSError``
    while opening or reading it) raises ``error`` saying it is not a readable HDF5 ``what``
    file."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as e:
        raise error(path, f"not a readable HDF5 {what} file ({e})") from e
