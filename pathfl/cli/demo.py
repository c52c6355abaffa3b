"""`pathfl demo`: the whole pipeline on the embedded three-hospital demo cohort.
Owned by the demo stage. Heavy imports happen inside the command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from pathfl.fl.flower.lifetime import stop_on_signals

HELP = (
    "Run the whole pipeline on a generated three-hospital cohort: write real pyramidal slides "
    "with a planted prognostic phenotype, tile, extract features (MobileNetV2, offline), "
    "train federated / pooled / local-only survival models with `pathfl fl simulate` (real "
    "processes on 127.0.0.1), score them on validation patients next to the oracle, and write "
    "OUT/report.md + OUT/figures/*.png.\n\n"
    "Exit code: 0 every stage ran, 1 a stage is unavailable or failed (the report says which), "
    "2 usage or configuration error."
)


@stop_on_signals()  # Ctrl-C: exit 130, SIGTERM: 143, no process of the run left
def demo(
    ctx: typer.Context,
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Output folder."),
    tiny: bool = typer.Option(
        False, "--tiny", help="Small cohort for CI (3 sites × 12 patients, one small slide each)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort, split and training."),
    workers: int = typer.Option(2, "--workers", "-j", help="Processes for generation/tiling."),
    rounds: int = typer.Option(None, "--rounds", help="Federated rounds (default: by size)."),
    local_epochs: int = typer.Option(None, "--local-epochs", help="Local epochs per round."),
    config: Path = typer.Option(
        None, "--config", "-c", help="YAML file of these options (command line wins)."
    ),
) -> None:
    from pathfl.config import ConfigError, merge_cli_and_yaml

    try:
        v = merge_cli_and_yaml(ctx, config)
        if int(v["workers"]) < 1:
            raise ConfigError("--workers must be ≥ 1")
    except ConfigError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(2) from None
    raise typer.Exit(_run(v))


def _run(v: dict[str, Any]) -> int:
    from rich.console import Console

    from pathfl.demo.pipeline import DemoConfig, run_demo

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # stage lines appear as they finish
    console = Console()
    if not console.is_terminal:
        console.width = 120  # logs and CI: no wrapping of the result table
    cfg = DemoConfig(
        out=Path(v["out"]),
        tiny=bool(v["tiny"]),
        seed=int(v["seed"]),
        workers=int(v["workers"]),
        rounds=v["rounds"],
        local_epochs=v["local_epochs"],
    )
    colours = {"ok": "green", "unavailable": "yellow", "failed": "red"}

    def on_stage(st: Any) -> None:
        c = colours.get(st.status, "white")
        console.print(
            f"[{c}]{st.status:>11}[/{c}]  {st.name:<9} {st.seconds:6.1f} s "
            f"(CPU {st.cpu_s:5.0f} s)  {st.detail}"
        )

    console.rule(f"pathfl demo → {cfg.out}")
    state = run_demo(cfg, on_stage=on_stage)
    if state.evaluation:
        _print_table(console, state.evaluation.summary)
    console.print(
        f"\nReport: [bold]{state.report_path}[/bold]  (pictures in {cfg.out / 'figures'})"
    )
    if not state.complete:
        bad = next(s for s in state.stages.values() if s.status != "ok")
        console.print(
            f"[yellow]Demo incomplete: stage '{bad.name}' is {bad.status}: {bad.detail}[/yellow]"
        )
        return 1
    return 0


def _print_table(console: Any, evaluation: dict[str, Any]) -> None:
    from rich.table import Table

    from pathfl.demo.tables import c_index_rows

    rows = c_index_rows(evaluation)
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    t = Table(title=f"C-index on the {evaluation['n_val_patients']} validation patients")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="left" if c == "model" else "right")
    for r in rows:
        t.add_row(*(r.get(c, "") for c in cols))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("demo", help=HELP)(demo)
