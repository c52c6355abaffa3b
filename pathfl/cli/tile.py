"""`pathfl tile`: tissue tiles of whole-slide images at one physical resolution.

Owned by the tile stage. Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pathfl.cli.options import field_options, listing_command, registry_names, with_options
from pathfl.tiling.params import GRID_HELP, TISSUE_HELP, GridParams, TissueParams

READERS = {"backend": registry_names("pathfl.slide", "list_readers")}
#: option -> field of pathfl.tiling.params.GridParams / TissueParams
GRID_OPTIONS = {
    "mpp": "target_mpp",
    "tile_px": "tile_px",
    "overlap": "overlap_px",
    "mpp_tolerance": "mpp_tolerance",
    "min_tissue": "min_tissue_fraction",
}
TISSUE_OPTIONS = {
    "tissue_mask_mpp": "mask_mpp",
    "tissue_threshold": "saturation_threshold",
    "tissue_min_saturation": "min_saturation",
    "tissue_max_saturation": "max_saturation",
    "tissue_blur_um": "blur_um",
    "tissue_close_um": "close_um",
    "tissue_min_object_um2": "min_object_um2",
    "tissue_max_hole_um2": "max_hole_um2",
    "remove_pen": "remove_pen",
}
#: one option per field, generated (defaults None = "not set here": the dataclass default)
_GRID_OPTIONS = field_options(
    GridParams, help=GRID_HELP, rename={f: o for o, f in GRID_OPTIONS.items()}
)
_TISSUE_OPTIONS = field_options(
    TissueParams,
    help=TISSUE_HELP,
    rename={f: o for o, f in TISSUE_OPTIONS.items()},
    flags={"remove_pen": "--remove-pen/--keep-pen"},
)

HELP = (
    "Find the tissue tiles of whole-slide images at one physical resolution.\n\n"
    "Writes OUT/coords/<slide_id>.h5 (level-0 tile coordinates, CLAM/TRIDENT-compatible "
    "attrs), OUT/thumbnails/<slide_id>.png (QC: tissue contours + tile grid), "
    "OUT/geojson/<slide_id>.geojson (tissue polygons for QuPath) and OUT/manifest.csv. "
    "Slides already tiled with the same parameters are skipped; a bad slide is recorded as "
    "failed and the batch goes on.\n\n"
    "Exit code: 0 all slides ok or skipped, 1 some failed, 2 usage or configuration error."
)


@with_options(_GRID_OPTIONS, _TISSUE_OPTIONS)
def tile(
    ctx: typer.Context,
    slides: list[Path] = typer.Argument(
        None, help="Slide files and/or folders of slides.", show_default=False
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (required)."),
    backend: str = typer.Option(
        "auto",
        "--backend",
        help="Slide reader: auto (the first that opens the slide) | {choices}.",
    ),
    mpp_override: float = typer.Option(
        None, "--mpp-override", help="µm/px at level 0 for every slide (ignores metadata)."
    ),
    slides_csv: Path = typer.Option(
        None, "--slides-csv", help="CSV with slide_id,path[,mpp]: ids, paths and per-slide mpp."
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Search folders recursively."),
    workers: int = typer.Option(1, "--workers", "-j", help="Slides processed in parallel."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Recompute slides whose outputs match the parameters."
    ),
    thumbnail_px: int = typer.Option(1200, "--thumbnail-px", help="Longer side of QC images."),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file of these options (command line wins)."
    ),
    **tiling_options: Any,
) -> None:
    """Tile slides (every GridParams / TissueParams field is an option)."""
    from pathfl.config import ConfigError, merge_cli_and_yaml, require
    from pathfl.registry import UnknownNameError

    try:
        v = merge_cli_and_yaml(ctx, config)
        require(v, "out")
        code = _run(v)
    except (ConfigError, UnknownNameError) as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _given(options: dict[str, str], v: dict[str, Any]) -> dict[str, str]:
    """The part of ``options`` (option -> field) set on the command line or in YAML; the
    others (None) keep the dataclass default."""
    return {o: f for o, f in options.items() if v.get(o) is not None}


def _build_config(v: dict[str, Any]) -> Any:
    from pathfl.config import ConfigError, dataclass_from
    from pathfl.slide import list_readers
    from pathfl.tiling.pipeline import TileConfig

    if v["backend"] != "auto" and v["backend"] not in list_readers():
        raise ConfigError(
            f"unknown backend {v['backend']!r}; valid: auto, {', '.join(list_readers())}"
        )
    if int(v["workers"]) < 1:
        raise ConfigError("--workers must be ≥ 1")
    grid = dataclass_from(GridParams, v, fields=_given(GRID_OPTIONS, v), what="tiling parameter")
    tissue = dataclass_from(
        TissueParams, v, fields=_given(TISSUE_OPTIONS, v), what="tiling parameter"
    )
    return TileConfig(
        grid=grid,
        tissue=tissue,
        backend=str(v["backend"]),
        thumbnail_px=int(v["thumbnail_px"]),
        overwrite=bool(v["overwrite"]),
    )


def _run(v: dict[str, Any]) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pathfl.cli.verbosity import CURRENT
    from pathfl.tiling.inputs import collect_jobs
    from pathfl.tiling.pipeline import run_batch, summarize

    cfg = _build_config(v)
    mpp_override = None if v["mpp_override"] is None else float(v["mpp_override"])
    jobs = collect_jobs(
        [Path(s) for s in (v["slides"] or [])],
        slides_csv=v["slides_csv"],
        mpp_override=mpp_override,
        recursive=bool(v["recursive"]),
    )
    out = Path(v["out"])
    console = Console(stderr=True)
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=CURRENT.quiet,  # -q: no progress bar
    ) as progress:
        task = progress.add_task("tiling", total=len(jobs))

        def on_result(r: Any) -> None:
            counts[r.status] += 1
            if CURRENT.level >= 1:  # -v: one line per slide
                detail = r.error if r.status == "failed" else f"{r.n_tiles} tiles"
                if r.status == "ok":
                    detail += f" at {r.mpp} µm/px, {r.seconds:.1f} s"
                progress.console.print(f"{r.status:7} {r.slide_id}: {detail}", highlight=False)
            desc = (
                f"tiling  ok {counts['ok']}  skipped {counts['skipped']}  failed {counts['failed']}"
            )
            progress.update(task, advance=1, description=desc)

        results = run_batch(jobs, out, cfg, workers=int(v["workers"]), on_result=on_result)
    s = summarize(results)
    console.print(
        f"{s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed; {s['tiles']} tiles; "
        f"manifest: {out / 'manifest.csv'}"
    )
    for r in results:
        for w in r.warnings:
            console.print(f"[yellow]warning[/yellow] {r.slide_id}: {w}", highlight=False)
        if r.status == "failed":
            console.print(f"[red]failed[/red] {r.slide_id}: {r.error}", highlight=False)
    return 1 if s["failed"] else 0


def register(app: typer.Typer) -> None:
    """Add ``pathfl tile`` to the root app."""
    app.command("tile", help=HELP, cls=listing_command(READERS))(tile)
