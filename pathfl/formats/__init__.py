"""The on-disk file formats, one module each: its schema (dataset keys, attribute names,
dtypes), its reader and writer (temporary file, then rename) and its validation, raising
:class:`FormatFileError` with a message that names the file.

* :mod:`~pathfl.formats.coords_h5` — the tile stage's ``OUT/coords/<slide_id>.h5`` (CLAM and
  TRIDENT compatible),
* :mod:`~pathfl.formats.features_h5` — the extract stage's ``OUT/features/<slide_id>.h5``.

Every stage, the synthetic cohorts and the tests read and write these files only through these
modules. They depend on nothing of pathfl but :mod:`pathfl.io`."""

from __future__ import annotations

from pathfl.formats.hdf5 import FormatFileError

__all__ = ["FormatFileError"]
