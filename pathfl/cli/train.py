"""`pathfl train` (`predict` and `heatmap` are in :mod:`pathfl.cli.predict`).
Heavy imports (torch, scikit-survival, openslide) happen inside the commands."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import typer

from pathfl.cli.options import (
    field_options,
    listing_command,
    registry_names,
    split_list,
    usage_error,
    with_options,
)
from pathfl.survival.config import FIELD_HELP, TrainConfig

logger = logging.getLogger(__name__)

TRAIN_HELP = (
    "Train an attention-MIL survival model on patient bags of tile features.\n\n"
    "Reads FEATURES/<slide_id>.h5 for every row of the clinical CSV (patient_id, slide_id, time, "
    "event[, covariates...]); runs K-fold cross-validation by patient (stratified by event), "
    "then fits a final model on all patients. Writes RUN/model.pt, config.json, metrics.json "
    "(per fold + pooled out-of-fold, bootstrap 95% CIs), predictions.csv (out-of-fold risks) "
    "and plots/km_risk_groups.png. The run is built in a temporary folder beside RUN and moved "
    "into place when complete; an existing RUN is replaced (wholly) only with --overwrite."
    "\n\nExit code: 0 ok, 2 usage/config/clinical-table error."
)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# CLI option -> TrainConfig field, where the names differ
_RENAMED = {"early_stopping": "early_stopping_patience"}
_NOT_TRAIN = {"features", "clinical", "out", "threads", "overwrite", "covariates", "group_by"}

_TRAIN_OPTIONS = field_options(
    TrainConfig,
    help=FIELD_HELP,
    rename={field: option for option, field in _RENAMED.items()},
    skip=("covariates",),  # a comma-separated string on the command line
    choices=("model", "loss"),
)


_TRAIN_CHOICES = {
    "model": registry_names("pathfl.survival.models", "list_models"),
    "loss": registry_names("pathfl.survival.heads", "list_heads"),
}


@with_options(_TRAIN_OPTIONS)
def train(
    ctx: typer.Context,
    features: Path = typer.Option(None, "--features", "-f", help="Folder of <slide_id>.h5."),
    clinical: Path = typer.Option(None, "--clinical", help="Clinical CSV (one row per slide)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory to write."),
    covariates: str = typer.Option(
        "", "--covariates", help="Comma-separated clinical columns fused with the bag embedding."
    ),
    threads: int = typer.Option(0, "--threads", help="Torch CPU threads (0 = torch default)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing run directory (as a whole, at the end)."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="YAML of these options."),
    group_by: str = typer.Option(
        "",
        "--group-by",
        help="`site`: site-preserved CV, one fold per site of the clinical `site` column "
        "(each site held out whole; metrics per held-out site).",
    ),
    **train_options: Any,
) -> None:
    """Cross-validated survival MIL training (every TrainConfig field is an option)."""
    from pathfl.config import ConfigError

    try:
        _train(ctx, config)
    except ConfigError as e:
        raise usage_error(str(e)) from None


def _train_config(v: dict[str, Any]) -> Any:
    """TrainConfig from the merged options: unset (None) options keep the TrainConfig
    default, so the CLI, YAML files and the library share one set of defaults."""
    from pathfl.config import ConfigError

    kw = {_RENAMED.get(k, k): x for k, x in v.items() if k not in _NOT_TRAIN and x is not None}
    try:
        return TrainConfig.from_dict({**kw, "covariates": split_list(v["covariates"])})
    except (TypeError, ValueError) as e:  # includes unknown model/loss names
        raise ConfigError(str(e)) from e


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an --out that holds anything unless --overwrite (nothing is touched here)."""
    from pathfl.config import ConfigError
    from pathfl.io import dir_has_files

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run directory")
    if dir_has_files(out) and not overwrite:
        names = sorted(p.name for p in out.iterdir())
        what = "a run" if (out / "config.json").is_file() else "files"
        shown = ", ".join(names[:6]) + (f", … ({len(names)} entries)" if len(names) > 6 else "")
        raise ConfigError(
            f"--out {out} already holds {what} ({shown}); nothing was changed. Pass --overwrite "
            "to replace the whole directory when the new run is complete, or choose another --out"
        )


def _train(ctx: typer.Context, config: Path | None) -> None:
    from pathfl.config import merge_cli_and_yaml, require

    v = merge_cli_and_yaml(ctx, config)
    require(v, "features", "clinical", "out")
    out = Path(v["out"])
    _check_out(out, overwrite=bool(v["overwrite"]))
    cfg = _train_config(v)
    _set_threads(v["threads"])
    from pathfl.io import atomic_dir
    from pathfl.survival.data import ClinicalError, load_cohort
    from pathfl.survival.run import rebase_run_paths

    try:
        _, bags = load_cohort(v["features"], v["clinical"], covariates=cfg.covariates)
    except (ClinicalError, FileNotFoundError) as e:
        raise usage_error(str(e)) from None
    with atomic_dir(out) as tmp:
        metrics = _cross_validate(bags, cfg, tmp, group_by=v.get("group_by") or None)
        metrics = rebase_run_paths(tmp, final=out.absolute()) or metrics
        from pathfl.report.sections import write_report_safely

        report = write_report_safely("train", tmp, name=out.name)
    _print_summary(metrics, out)
    if report is not None:
        typer.echo(f"report: {out / report.name}")


def _cross_validate(
    bags: list[Any], cfg: Any, run_dir: Path, *, group_by: str | None = None
) -> dict[str, Any]:
    """Cross-validate with progress: per fold and epoch the training loss (and validation
    loss with early stopping), and each fold's validation C-index when it is scored
    (``group_by="site"``: one fold per site, held out whole)."""
    from pathfl.cli.progress import PhaseProgress
    from pathfl.survival.cv import cross_validate

    with PhaseProgress(unit="epoch") as bar:
        try:
            return cross_validate(bags, cfg, run_dir, progress=bar.update, group_by=group_by)
        except ValueError as e:
            raise usage_error(str(e)) from None


def baseline_comparison(metrics: dict[str, Any]) -> str | None:
    """One line comparing the model's pooled out-of-fold Harrell C with the linear-cox
    baseline's on the same folds (None without both)."""
    model = (metrics.get("pooled_oof") or {}).get("c_index")
    lc = (metrics.get("linear_cox") or {}).get("c_index")
    if model is None or lc is None or not (math.isfinite(model) and lc > 0):
        return None
    ratio = model / lc
    line = f"{metrics['config']['model']} vs linear-cox (OOF Harrell C): {model:.3f} vs {lc:.3f}"
    if ratio >= 1.0:
        return f"{line} ({ratio:.2f}x): the model ranks at least as well as the linear baseline"
    return (
        f"{line} ({ratio:.2f}x): the linear baseline ranks these patients better; small "
        "cohorts often do (docs/train.md, 'What the defaults give')"
    )


def _print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from pathfl.survival.metrics import format_c_index

    con = Console()
    if metrics.get("folds"):
        t = Table(title=f"cross-validation ({run_dir})")
        for col in ("fold", "Harrell C (95% CI; patients, events, pairs)", "Uno C", "mean AUC"):
            t.add_column(col)
        t.add_column("IBS")
        rows = [*metrics["folds"], {**metrics["pooled_oof"], "fold": "pooled OOF"}]
        if "linear_cox" in metrics:
            rows.append({**metrics["linear_cox"], "fold": "linear-cox baseline (OOF)"})
        for m in rows:
            fold = m["fold"] if isinstance(m["fold"], str) else str(m["fold"] + 1)
            t.add_row(
                f"{fold} (site {m['held_out_site']})" if "held_out_site" in m else fold,
                format_c_index(m),
                f"{m['uno_c']:.3f}",
                f"{m['mean_auc']:.3f}",
                f"{m['integrated_brier']:.3f}",
            )
        con.print(t)
        line = baseline_comparison(metrics)
        if line:
            con.print(line)
        km = metrics.get("km_logrank", {})
        con.print(f"KM plot: {km.get('png')} (log-rank p = {km.get('p_value', float('nan')):.3g})")
    con.print(f"model (trained on all patients): {run_dir / 'model.pt'}")


def register(app: typer.Typer) -> None:
    """Add `train` to the root app."""
    app.command("train", help=TRAIN_HELP, cls=listing_command(_TRAIN_CHOICES))(train)
