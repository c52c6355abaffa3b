"""``pathfl fl personalise``: a site of a real federation adapts the final global model to its
own data (head fine-tuning or FedBN-style refit of the input standardisation), on its own
machine, and compares it with the global model on its validation patients. Thin over
:func:`pathfl.fl.personalise.personalise_deployed_site`."""

from __future__ import annotations

from pathlib import Path

import typer


def register_personalise(fl_app: typer.Typer) -> None:
    """Add ``personalise`` to ``pathfl fl``."""
    fl_app.command("personalise")(personalise_cmd)


def personalise_cmd(
    run: Path = typer.Option(
        ..., "--run", help="The federated run dir (model.pt, config.json, fl_config.json)."
    ),
    features: Path = typer.Option(..., "--features", help="This site's features folder."),
    clinical: Path = typer.Option(..., "--clinical", help="This site's clinical CSV."),
    name: str = typer.Option(..., "--name", help="Site name (as in the federation)."),
    part: str = typer.Option("head", "--part", help="head | norm: what is adapted locally."),
    out: Path = typer.Option(..., "--out", help="Run dir for the personalised model."),
    steps: int = typer.Option(100, "--steps", min=1, help="Optimizer steps of the adaptation."),
    audit_log: Path = typer.Option(
        None, "--audit-log", help="This site's audit log (JSONL): one entry is appended."
    ),
) -> None:
    """Adapt the federated model to this site's data; nothing is sent anywhere."""
    from pathfl.config import ConfigError
    from pathfl.fl.personalise import personalise_deployed_site, table
    from pathfl.survival.personalise import PARTS

    if part not in PARTS:
        raise ConfigError(f"--part {part!r}: choose from {', '.join(PARTS)}")
    for p in (run, features, clinical):
        if not p.exists():
            raise ConfigError(f"{p}: not found")
    rows = personalise_deployed_site(
        run, features, clinical, site=name, part=part, out=out, steps=steps,
        audit_log=audit_log,
    )  # fmt: skip
    typer.echo(table(rows))
    typer.echo(f"personalised run dir: {out} (pathfl predict --run {out} ...)")
