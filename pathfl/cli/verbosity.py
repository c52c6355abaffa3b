"""What ``-q`` and ``-v`` mean, the same in every command.

- ``-q``: no progress; results, warnings and errors only.
- (none): pathfl's warnings and errors; progress — a live bar on a terminal, otherwise one
  concise line per step (fold, epoch, round).
- ``-v``: also what each step did (pathfl INFO messages; ``tile``: one line per slide).
- ``-vv``: also pathfl's debugging detail (DEBUG).
- ``-vvv``: also third-party libraries' DEBUG messages.

Third-party loggers (h5py, zarr, matplotlib, PIL, flwr, ...) stay at WARNING below
``-vvv``: only the ``pathfl`` logger is raised, the root logger is not."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass


@dataclass
class Verbosity:
    """The verbosity the root command was given (``level``: -1 = ``-q``, 0, 1 = ``-v``, ...)."""

    level: int = 0

    @property
    def quiet(self) -> bool:
        return self.level < 0

    @property
    def progress(self) -> bool:
        """Whether a command shows progress at all."""
        return not self.quiet

    @staticmethod
    def live() -> bool:
        """Whether progress may redraw in place (a terminal), rather than print lines."""
        return sys.stderr.isatty()


CURRENT = Verbosity()


def levels(level: int) -> tuple[int, int]:
    """(level of the ``pathfl`` logger, level of the root logger) for verbosity ``level``."""
    own = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG)
    return own, logging.DEBUG if level >= 3 else logging.WARNING


def configure(*, verbose: int, quiet: bool) -> Verbosity:
    """Set up logging for ``-v`` × ``verbose`` / ``-q`` (``-q`` wins) and remember it."""
    from rich.console import Console
    from rich.logging import RichHandler

    CURRENT.level = -1 if quiet else max(0, verbose)
    own, root = levels(CURRENT.level)
    logging.basicConfig(
        level=root,
        format="%(name)s: %(message)s",
        handlers=[
            RichHandler(
                console=Console(stderr=True),
                show_path=False,
                show_time=CURRENT.level >= 2,
                rich_tracebacks=CURRENT.level >= 2,
            )
        ],
        force=True,
    )
    logging.getLogger("pathfl").setLevel(own)
    return CURRENT
