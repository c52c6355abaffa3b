"""The errors of the slide layer."""

from __future__ import annotations


class SlideError(Exception):
    """A slide cannot be opened or used; the message names the file and what is wrong."""


class SlideMetadataError(SlideError):
    """A backend read the file, but its metadata cannot be used (no image levels, microns per
    pixel unknown): ``backend="auto"`` reports it instead of trying another backend."""
