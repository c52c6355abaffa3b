"""`pathfl predict` and `pathfl heatmap`: use a run directory of `pathfl train`.
Heavy imports (torch, openslide) happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pathfl.cli.options import listing_command, registry_names, split_list, usage_error
from pathfl.config import ConfigError, merge_cli_and_yaml, require

_CONFIG_HELP = "YAML file of these options (command line wins)."


def _merged(ctx: typer.Context, config: Path | None, *required: str) -> dict[str, Any]:
    try:
        v = merge_cli_and_yaml(ctx, config)
        require(v, *required)
    except ConfigError as e:
        raise usage_error(str(e)) from None
    return v


def predict(
    ctx: typer.Context,
    run: Path = typer.Option(None, "--run", help="Run directory from `pathfl train`."),
    features: Path = typer.Option(None, "--features", "-f", help="Folder of <slide_id>.h5."),
    clinical: Path = typer.Option(
        None, "--clinical", help="Clinical CSV (patient_id, slide_id, time, event...)."
    ),
    slides: str = typer.Option(
        "", "--slides", help="Without --clinical: comma-separated slide ids (one patient each)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of patient_id, risk[, time, event]."),
    times: str = typer.Option(
        "", "--times", help="Comma-separated times (clinical unit): adds columns surv_<t> = S(t|x)."
    ),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
) -> None:
    """Risk scores (and survival probabilities at --times) of new patients with a trained run
    (every tile used)."""
    v = _merged(ctx, config, "run", "features", "out")
    run, features, out = Path(v["run"]), Path(v["features"]), Path(v["out"])
    clinical = None if v["clinical"] is None else Path(v["clinical"])
    p, has_outcome = _predict(run, features, clinical=clinical, slides=split_list(v["slides"]))
    from pathfl.survival.curves import curve_metrics, parse_times, survival_columns
    from pathfl.survival.run import PREDICT_COLUMNS, write_predictions

    try:
        surv = survival_columns(p, parse_times(split_list(v["times"])))
    except ValueError as e:
        raise usage_error(f"{run}: {e}") from None

    rows = [
        {
            "patient_id": pid,
            "risk": float(r),
            "time": float(t) if has_outcome else "",
            "event": int(e) if has_outcome else "",
            **sc,
        }
        for pid, r, t, e, sc in zip(p.patient_ids, p.risk, p.time, p.event, surv, strict=True)
    ]
    write_predictions(out, rows, columns=PREDICT_COLUMNS)  # no fold: these are new patients
    typer.echo(f"wrote {len(rows)} risks to {out}")
    if has_outcome and len(rows) > 1:
        from pathfl.survival.metrics import c_index_summary, format_c_index

        c = c_index_summary(p.event, p.time, p.risk)
        typer.echo(f"Harrell C-index on these patients: {format_c_index(c)}")
    if has_outcome and len(rows) > 1:  # survival-function metrics (runs that have S(t))
        for k, val in curve_metrics(p).items():
            if k != "auc_times":
                typer.echo(f"{k.replace('_', ' ')} on these patients: {val:.3f}")


def _predict(
    run: Path, features: Path, *, clinical: Path | None, slides: list[str]
) -> tuple[Any, bool]:
    """(predictions, whether the table had outcomes) of the run's model on ``features``."""
    from pathfl.survival.data import ClinicalError, load_bags
    from pathfl.survival.fingerprint import FingerprintMismatchError
    from pathfl.survival.inference import (
        check_bags_for_run,
        clinical_for_slides,
        load_predict_table,
    )
    from pathfl.survival.run import RunError, load_run
    from pathfl.survival.train import predict as predict_fn

    try:
        model, cfg, extras = load_run(run)
        if clinical is not None:
            table, has_outcome = load_predict_table(clinical, cfg.covariates)
        else:
            ids = slides or sorted(p.stem for p in features.glob("*.h5"))
            table, has_outcome = clinical_for_slides(ids), False
        raw = load_bags(features, table, covariates=cfg.covariates, augmented=False)
        bags = extras["scaler"].apply(raw)  # prediction: original features, no copies
        check_bags_for_run(bags, extras, source=f"{features} ({len(bags)} patient(s))", run=run)
    except (ClinicalError, RunError, FileNotFoundError, FingerprintMismatchError) as e:
        raise usage_error(str(e)) from None
    if bags and bags[0].feature_dim != extras["feature_dim"]:
        raise usage_error(
            f"features are {bags[0].feature_dim}-d, the model wants {extras['feature_dim']}"
        )
    p = predict_fn(model, bags, cfg, time_bins=extras["time_bins"], baseline=extras["baseline"])
    return p, has_outcome


def heatmap(
    ctx: typer.Context,
    run: Path = typer.Option(None, "--run", help="Run directory from `pathfl train`."),
    features: Path = typer.Option(None, "--features", "-f", help="Folder of <slide_id>.h5."),
    slide: Path = typer.Option(None, "--slide", help="The whole-slide image."),
    out: Path = typer.Option(
        None,
        "--out",
        "-o",
        help="PNG to write (+ <out>_top_tiles.png, <out>_scores.csv, "
        "<out>_tiles.geojson for QuPath).",
    ),
    slide_id: str = typer.Option(
        None, "--slide-id", help="Features file stem (default: file stem)."
    ),
    backend: str = typer.Option("auto", "--backend", help="Slide reader: auto | {choices}."),
    mpp_override: float = typer.Option(None, "--mpp-override", help="µm/px at level 0."),
    thumb_px: int = typer.Option(1024, "--thumb-px", help="Longer side of the thumbnail."),
    n_top: int = typer.Option(16, "--n-top", help="Tiles in the top-score montage."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
) -> None:
    """Per-tile scores over the slide thumbnail + a montage of the top-scoring tiles."""
    from pathfl.survival.inference import slide_heatmap
    from pathfl.survival.run import RunError

    v = _merged(ctx, config, "run", "features", "slide", "out")
    try:
        paths = slide_heatmap(
            Path(v["run"]),
            Path(v["features"]),
            Path(v["slide"]),
            Path(v["out"]),
            slide_id=v["slide_id"],
            backend=str(v["backend"]),
            mpp_override=None if v["mpp_override"] is None else float(v["mpp_override"]),
            thumb_px=int(v["thumb_px"]),
            n_top=int(v["n_top"]),
        )
    except (RunError, FileNotFoundError, ValueError) as e:
        raise usage_error(str(e)) from None
    for p in paths:
        typer.echo(f"wrote {p}")


def register(app: typer.Typer) -> None:
    """Add `predict` and `heatmap` to the root app."""
    app.command("predict")(predict)
    readers = {"backend": registry_names("pathfl.slide", "list_readers")}
    app.command("heatmap", cls=listing_command(readers))(heatmap)
