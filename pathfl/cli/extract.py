"""`pathfl extract` and `pathfl encoders`. Owned by the extract stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pathfl.cli.options import field_options, listing_command, with_options
from pathfl.config import ConfigError, merge_cli_and_yaml
from pathfl.features.options import EXTRACT_HELP, ExtractOptions

if TYPE_CHECKING:
    from pathfl.features.plan import Plan
    from pathfl.io import ManifestRow


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML: numbers, lists, booleans) → dict."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--encoder-option must be KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


#: fields whose command-line spelling differs (KEY=VALUE list, -1/0 = auto, "K/N"): written below
_SPELLED = ("encoder_options", "workers", "threads", "shard")
#: one option per other field, generated (default None = "not set here": the field's default)
_EXTRACT_OPTIONS = field_options(
    ExtractOptions,
    help=EXTRACT_HELP,
    skip=_SPELLED,
    flags={"overwrite": "--overwrite"},
    choices=("encoder", "precision", "dtype", "stain_norm"),
)


@with_options(_EXTRACT_OPTIONS)
def extract_cmd(
    ctx: typer.Context,
    tiles: Path = typer.Option(None, "--tiles", help="Output folder of `pathfl tile` (coords/)."),
    out: Path = typer.Option(None, "--out", help="Writes OUT/features/<slide_id>.h5 + manifest."),
    encoder_option: list[str] = typer.Option(
        [], "--encoder-option", help="KEY=VALUE for timm encoders (repeatable; mean, std, …)."
    ),
    workers: int = typer.Option(-1, "--workers", help="Tile-reading processes (-1 = auto)."),
    threads: int = typer.Option(
        0, "--threads", help="Encoder threads on CPU (0 = torch's default: all cores)."
    ),
    shard: str | None = typer.Option(None, "--shard", help="K/N: this job's share (0 <= K < N)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with these options."),
    **extract_options: Any,
) -> None:
    """Encode the tiles of every slide into a features file (resumable; see docs/extract.md)."""
    from pathfl.config import require
    from pathfl.features.pipeline import ExtractCallbacks, extract, manifest_path

    params = merge_cli_and_yaml(ctx, config)
    require(params, "tiles", "out")
    opts = _extract_options(params)
    out_dir = Path(params["out"])
    rows = _run_with_progress(Path(params["tiles"]), out_dir, opts, ExtractCallbacks, extract)
    _summary(rows, manifest_path(out_dir, opts.shard))
    if any(r.status == "failed" for r in rows):
        raise typer.Exit(1)


def _encoder_names() -> list[str]:
    from pathfl.features.encoders import list_encoders

    return [r["name"] for r in list_encoders()]


def _precisions() -> list[str]:
    from pathfl.features.inference import PRECISIONS

    return list(PRECISIONS)


def _dtypes() -> list[str]:
    from pathfl.formats.features_h5 import FEATURE_DTYPES

    return list(FEATURE_DTYPES)


def _stain_norms() -> list[str]:
    from pathfl.features.options import STAIN_NORMS

    return list(STAIN_NORMS)


_CHOICES = {
    "encoder": _encoder_names,
    "precision": _precisions,
    "dtype": _dtypes,
    "stain_norm": _stain_norms,
}


def _extract_options(params: dict[str, Any]) -> ExtractOptions:
    """:class:`~pathfl.features.options.ExtractOptions` from the merged options: an unset
    (None) generated option keeps the field's default."""
    from pathfl.config import dataclass_from
    from pathfl.features.pipeline import default_workers
    from pathfl.features.plan import parse_shard

    generated = {p.name: p.name for p in _EXTRACT_OPTIONS if params.get(p.name) is not None}
    opts: ExtractOptions = dataclass_from(
        ExtractOptions, params, fields=generated, what="extract option"
    )
    raw = params["encoder_option"]
    n_workers = int(params["workers"])
    opts.encoder_options = dict(raw) if isinstance(raw, dict) else _parse_options(list(raw))
    opts.workers = default_workers() if n_workers < 0 else n_workers
    opts.shard = parse_shard(params["shard"])
    opts.threads = int(params["threads"]) or None
    return opts


def _run_with_progress(
    tiles: Path, out: Path, opts: Any, callbacks_cls: Any, extract: Any
) -> list[ManifestRow]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pathfl.cli.verbosity import CURRENT

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=CURRENT.quiet,  # -q: no progress bar
    )
    state: dict[str, Any] = {"task": None}

    def on_start(plan: Plan) -> None:
        state["task"] = progress.add_task(f"extract {opts.encoder}", total=plan.n_tiles, rate="")

    def on_tiles(slide_id: str, n: int) -> None:
        task = state["task"]
        if task is None:
            return
        progress.update(task, advance=n, description=f"{slide_id}")
        speed = progress.tasks[task].speed
        if speed:
            progress.update(task, rate=f"{speed:,.0f} tiles/s")

    def on_slide(row: ManifestRow) -> None:
        style = {"ok": "green", "skipped": "dim", "failed": "red"}[row.status]
        detail = f" — {row.error}" if row.error else ""
        progress.console.print(
            f"[{style}]{row.status:7}[/] {row.slide_id} ({row.n_tiles} tiles){detail}",
            markup=True,
            highlight=False,
        )

    with progress:
        return extract(
            tiles,
            out,
            options=opts,
            callbacks=callbacks_cls(on_start=on_start, on_tiles=on_tiles, on_slide=on_slide),
        )


def _summary(rows: list[ManifestRow], manifest: Path) -> None:
    from rich.console import Console

    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "skipped", "failed")}
    n_tiles = sum(r.n_tiles for r in rows if r.status == "ok")
    Console(stderr=True).print(
        f"{counts['ok']} ok ({n_tiles} tiles), {counts['skipped']} skipped, "
        f"{counts['failed']} failed — manifest: {manifest}",
        highlight=False,
    )


def encoders_cmd() -> None:
    """List the encoders: feature dim, native tile px and µm/px, normalisation, weights."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pathfl.features.encoders import IMAGENET_MEAN, IMAGENET_STD, list_encoders

    table = Table(title="pathfl encoders", show_lines=True)
    for col in ("name", "dim", "px", "µm/px", "mean / std", "here", "weights"):
        table.add_column(col, overflow="fold", no_wrap=col in ("name", "dim", "px", "here"))
    for r in list_encoders():
        if r["mean"] is None:
            norm = "model's config"
        elif tuple(r["mean"]) == IMAGENET_MEAN and tuple(r["std"]) == IMAGENET_STD:
            norm = "ImageNet"
        else:
            norm = f"{r['mean']} / {r['std']}"
        table.add_row(
            r["name"],
            str(r["feature_dim"] or "model's"),
            str(r["input_px"] or "model's"),
            escape(_native_mpp(r)),
            norm,
            "[green]yes[/]" if r["available"] else "[red]no[/]",
            escape(f"{r['source']}: {r['weights']}"),
        )
    Console().print(table)


def _native_mpp(row: dict[str, Any]) -> str:
    """The native µm/px column: the values (checked at extraction), else why there is none."""
    mpps = " / ".join(f"{m:g}" for m in row["native_mpp"])
    note = row.get("mpp_note") or ""
    if mpps:
        return f"{mpps} ({note})" if note else mpps
    return f"none: {note}" if note else "none"


def register(app: typer.Typer) -> None:
    """Add `extract` and `encoders` to the root app."""
    app.command("extract", cls=listing_command(_CHOICES))(extract_cmd)
    app.command("encoders")(encoders_cmd)
