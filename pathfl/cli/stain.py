"""`pathfl stain-ref fit`: fit the stain reference that `pathfl extract --stain-norm` uses."""

from __future__ import annotations

from pathlib import Path

import typer

stain_app = typer.Typer(
    help="Stain references for `pathfl extract --stain-norm` (see docs/extract.md).",
    no_args_is_help=True,
)


@stain_app.command("fit")
def fit_cmd(
    tiles: Path = typer.Option(..., "--tiles", help="Output folder of `pathfl tile` (coords/)."),
    out: Path = typer.Option(..., "--out", help="Reference JSON file to write."),
    method: str = typer.Option("macenko", "--method", help="macenko | reinhard."),
    slide: list[str] = typer.Option(
        [], "--slide", help="Fit on this slide id only (repeatable; default: every slide)."
    ),
    n_tiles: int = typer.Option(256, "--n-tiles", help="Tiles drawn at random to fit on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tile draw."),
    slide_dir: Path | None = typer.Option(
        None, "--slide-dir", help="Where the slides are, if not at the tiles manifest's paths."
    ),
) -> None:
    """Fit a Macenko (stain matrix + max concentrations) or Reinhard (L*a*b* means/stds)
    reference on one slide or a sample of tiles, and write it with its SHA-256."""
    from pathfl.config import ConfigError
    from pathfl.features.stain_ref import fit_reference, sample_tiles, save_reference

    if method not in ("macenko", "reinhard"):
        raise ConfigError(f"--method must be macenko or reinhard, got {method!r}")
    if n_tiles < 1:
        raise ConfigError("--n-tiles must be >= 1")
    pixels, info = sample_tiles(
        tiles, slides=slide or None, n_tiles=n_tiles, seed=seed, slide_dir=slide_dir
    )
    try:
        ref = fit_reference(pixels, method, fitted_on=info)
    except ValueError as e:
        raise ConfigError(f"{tiles}: {e} in the {info['n_tiles']} sampled tiles") from None
    save_reference(ref, out)
    typer.echo(
        f"{method} reference fitted on {info['n_tiles']} tiles of {len(info['slides'])} "
        f"slide(s): {out} (sha256 {ref.sha256[:12]})"
    )


def register(app: typer.Typer) -> None:
    """Add `stain-ref` to the root app."""
    app.add_typer(stain_app, name="stain-ref")
