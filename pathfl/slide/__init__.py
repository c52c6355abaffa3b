"""Whole-slide image access: one :class:`Slide` interface, several backends.

``open_slide(path)`` opens a slide with the default backend (OpenSlide, falling back to
tiffslide when OpenSlide cannot read the file). Every backend resolves the slide's microns per
pixel as it opens it (:class:`~pathfl.slide.base.Slide`: override → vendor metadata → TIFF
resolution tags → :class:`SlideMetadataError`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathfl.registry import Registry
from pathfl.slide.base import Slide
from pathfl.slide.errors import SlideError, SlideMetadataError
from pathfl.slide.integrity import check_tiff_integrity

__all__ = ["READERS", "Slide", "SlideError", "SlideMetadataError", "list_readers", "open_slide"]

logger = logging.getLogger(__name__)

READERS: Registry[Slide] = Registry("slide reader")


@READERS.register("openslide", formats="svs, tif(f), ndpi, vms, vmu, scn, mrxs, bif, svslide, dcm")
def _openslide(
    path: str | Path, *, slide_id: str | None = None, mpp_override: float | None = None
) -> Slide:
    from pathfl.slide.openslide_backend import OpenSlideSlide

    return OpenSlideSlide(path, slide_id=slide_id, mpp_override=mpp_override)


@READERS.register("tiffslide", formats="svs, tif(f), ndpi, scn, bif, philips tiff")
def _tiffslide(
    path: str | Path, *, slide_id: str | None = None, mpp_override: float | None = None
) -> Slide:
    from pathfl.slide.tiffslide_backend import TiffSlideSlide

    return TiffSlideSlide(path, slide_id=slide_id, mpp_override=mpp_override)


#: backends tried, in order, by ``backend="auto"``
AUTO_ORDER = ("openslide", "tiffslide")


def list_readers() -> list[str]:
    """Registered backend names (valid values of ``backend`` besides "auto")."""
    return READERS.list()


def _open_raw(path: Path, backend: str, **kwargs: Any) -> Slide:
    """Open with ``backend``, or with "auto" the first backend of :data:`AUTO_ORDER` that can
    read the file; metadata problems (:class:`SlideMetadataError`) are not retried."""
    if backend != "auto":
        factory: Callable[..., Slide] = READERS.get(backend)
        return factory(path, **kwargs)
    errors = []
    for name in AUTO_ORDER:
        try:
            slide = READERS.get(name)(path, **kwargs)
        except SlideMetadataError:
            raise
        except SlideError as e:
            errors.append(str(e))
            logger.debug("%s", e)
            continue
        return _prefer_pyramid(slide, path, **kwargs)
    # both failed: report the first (default backend) reason plus the fallback's
    raise SlideError("; ".join(errors))


def _prefer_pyramid(slide: Slide, path: Path, **kwargs: Any) -> Slide:
    """OpenSlide reads only the main IFD chain of a generic TIFF, so an OME-TIFF whose
    pyramid lives in SubIFDs looks like one huge level to it (every thumbnail and tissue mask
    would be read at full resolution). When OpenSlide sees a single level and tiffslide sees
    a pyramid, use tiffslide."""
    if slide.backend != "openslide" or slide.level_count > 1:
        return slide
    try:
        other = READERS.get("tiffslide")(path, **kwargs)
    except SlideError:
        return slide
    if other.level_count > 1 and other.dimensions == slide.dimensions:
        logger.info("%s: OpenSlide sees one level, tiffslide a pyramid: using tiffslide", path)
        slide.close()
        return other
    other.close()
    return slide


def open_slide(
    path: str | Path,
    *,
    backend: str = "auto",
    mpp_override: float | None = None,
    slide_id: str | None = None,
) -> Slide:
    """Open ``path`` read-only and resolve its metadata.

    Args:
        backend: "auto" (OpenSlide, then tiffslide), or a name from :func:`list_readers`.
        mpp_override: µm/px at level 0 to use instead of the file's metadata.
        slide_id: id used in outputs (default: file stem).

    Raises:
        SlideError: the file is missing, unreadable, truncated, has no levels, or its mpp is
            unknown (the message says how to supply it).
        UnknownNameError: ``backend`` is not a registered reader.
    """
    path = Path(path)
    if backend != "auto":
        READERS.get(backend)  # unknown names fail before touching the file
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    check_tiff_integrity(path)
    slide = _open_raw(path, backend, slide_id=slide_id, mpp_override=mpp_override)
    logger.debug("opened %r (mpp from %s)", slide, slide.mpp_source)
    return slide
