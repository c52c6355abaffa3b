"""Progress of long commands (``train`` epochs, ``fl`` rounds) as :mod:`.verbosity` says:
a live rich bar per phase on a terminal, a few concise lines otherwise (four per phase and
the fold's validation C), nothing with ``-q``. All of it goes to stderr; results go to
stdout."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import typer

from pathfl.cli.verbosity import CURRENT

LABELS = {"loss": "loss", "val_loss": "val loss", "val_c_index": "val C"}


def describe(stats: Mapping[str, float]) -> str:
    """``loss 0.693  val loss 0.701  val C 0.640 (n 12, 7 events)`` from a stats dict."""
    parts = [f"{label} {stats[k]:.3f}" for k, label in LABELS.items() if k in stats]
    if "val_n" in stats:
        parts[-1] += f" (n {int(stats['val_n'])}, {int(stats.get('val_events', 0))} events)"
    return "  ".join(parts)


class PhaseProgress:
    """``update(phase, done, total, stats)`` shows how far ``phase`` (e.g. ``fold 1/5``) got;
    use as a context manager. ``unit`` names a step (``epoch``, ``round``)."""

    def __init__(self, *, unit: str = "epoch", live: bool | None = None) -> None:
        self.unit = unit
        self.enabled = CURRENT.progress
        self.live = self.enabled and (CURRENT.live() if live is None else live)
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._printed: dict[str, int] = {}

    def __enter__(self) -> PhaseProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[step]}"),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    def update(self, phase: str, done: int, total: int, stats: Mapping[str, float]) -> None:
        """Record that ``phase`` finished step ``done`` of ``total`` with ``stats``."""
        if not self.enabled:
            return
        text = describe(stats)
        step = f"{self.unit} {done}/{total}"
        if self._bar is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._bar.add_task(phase, total=total, step="", stats="")
            self._bar.update(self._tasks[phase], completed=done, total=total, step=step, stats=text)
            return
        if "val_c_index" in stats:  # the phase's result, after its last step was shown
            scored = {k: v for k, v in stats.items() if k != "loss"}
            typer.echo(f"{phase}: {describe(scored)}", err=True)
            return
        every = max(1, total // 4)
        if (done % every == 0 or done >= total) and done != self._printed.get(phase):
            self._printed[phase] = done
            typer.echo(f"{phase}: {step}  {text}".rstrip(), err=True)
