"""The ``pathfl`` command line. Each stage lives in its own module exposing ``register(app)``;
heavy imports (torch, flwr, openslide) happen inside the commands, so ``pathfl --help`` is fast.

Exit codes (DESIGN): 0 = every slide ok, 1 = some slides failed (see the manifest),
2 = usage or configuration error, 130 = stopped by SIGINT (Ctrl-C), 143 = stopped by SIGTERM
(see :mod:`pathfl.interrupts`)."""

from __future__ import annotations

import sys

import typer

from pathfl import __version__
from pathfl.cli import demo, extract, fl, predict, stain, tile, train
from pathfl.cli.options import CommandGroup
from pathfl.config import ConfigError
from pathfl.interrupts import Interrupted, checkpoint, handling_signals
from pathfl.registry import UnknownNameError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


app = typer.Typer(
    name="pathfl",
    cls=CommandGroup,
    help="Tile whole-slide images, extract features, train MIL survival models, federate.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pathfl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: int = typer.Option(
        0,
        "--verbose",
        "-v",
        count=True,
        metavar="",
        show_default=False,
        help="More detail, repeatable: -v what each step did, -vv debug, -vvv third-party "
        "libraries' debug too.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress; only results, warnings and errors."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """-q/-v mean the same in every command (see :mod:`pathfl.cli.verbosity`)."""
    from pathfl.cli.verbosity import configure

    configure(verbose=verbose, quiet=quiet)


for _module in (tile, extract, stain, train, predict, fl, demo):
    _module.register(app)


def _run_app() -> None:
    """The app, then :func:`~pathfl.interrupts.checkpoint`: a signal whose exception Python
    dropped (it came during garbage collection) still ends with 130/143, not 0."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        checkpoint()
        raise
    checkpoint()


def main() -> None:
    """Console-script entry point: maps configuration errors to exit code 2 and a SIGINT or
    SIGTERM to 128 + its number (130, 143) after the command cleaned up."""
    try:
        with handling_signals():
            _run_app()
    except (ConfigError, UnknownNameError) as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(EXIT_USAGE)
    except Interrupted as e:
        typer.secho(
            f"interrupted by {e.name}: stopped; nothing half-written is left. Run the same "
            "command again: tile and extract skip the slides they finished (see the "
            "manifest), `pathfl fl run --resume` continues a federated run, train starts over",
            err=True,
            fg="yellow",
        )
        sys.exit(e.exit_code)
