"""`pathfl fl` command(s). Owned by the fl stage."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root app (filled in by the fl stage)."""
