"""`pathfl tile` command(s). Owned by the tile stage."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app (filled in by the tile stage)."""
