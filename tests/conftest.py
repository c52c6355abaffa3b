"""Shared pytest fixtures. Federated tests use only 127.0.0.1; Flower telemetry is off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

REPO = Path(__file__).resolve().parents[1]
CMU_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    """The real OpenSlide CMU test slide from ../shared (skipped when absent)."""
    if not CMU_SLIDE.is_file():
        pytest.skip(f"real test slide not found at {CMU_SLIDE} (needs ../shared beside the repo)")
    return CMU_SLIDE
