"""`pathfl fl audit verify LOG` / `show LOG` / `cross-check SERVER_LOG SITE=LOG...`: check and
read audit logs (:mod:`pathfl.fl.trust.audit`).

``pathfl fl`` adds these to its typer group with ``register_audit(fl_app)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pathfl.cli.options import CommandGroup

EXIT_OK, EXIT_TAMPERED, EXIT_USAGE = 0, 1, 2

SHOW_COLUMNS = ("seq", "time", "event", "round", "sites", "n", "model in", "out/update", "info")


def register_audit(fl_app: typer.Typer) -> None:
    """Add the ``audit`` sub-group (``verify``, ``show``, ``cross-check``) to ``pathfl fl``."""
    audit_app = typer.Typer(
        name="audit",
        cls=CommandGroup,
        help="Check (verify), list (show) or compare (cross-check) hash-chained audit logs.",
        no_args_is_help=True,
    )
    audit_app.command("verify")(verify_cmd)
    audit_app.command("show")(show_cmd)
    audit_app.command("cross-check")(cross_check_cmd)
    fl_app.add_typer(audit_app, name="audit")


def _require_log(log: Path) -> None:
    if not log.is_file():
        typer.secho(f"error: {log}: no such audit log", err=True, fg="red")
        raise typer.Exit(EXIT_USAGE)


def verify_cmd(
    log: Path = typer.Argument(..., help="Audit log (JSON lines) to check."),
    key_env: str = typer.Option(
        "PATHFL_AUDIT_KEY",
        "--key-env",
        help="Environment variable holding the HMAC key the log was written with, if any.",
    ),
    allow_missing_head: bool = typer.Option(
        False,
        "--allow-missing-head",
        help="Only warn when LOG.head is missing (truncation then goes undetected).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Verify the hash chain and head of LOG; exit 0 if intact, 1 if tampered/truncated."""
    from pathfl.fl.trust.audit import key_from_env, verify

    _require_log(log)
    report = verify(log, key=key_from_env(key_env), require_head=not allow_missing_head)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(log, report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_TAMPERED)


def _print_report(log: Path, report: Any) -> None:
    for w in report.warnings:
        typer.secho(f"warning: {w}", fg="yellow")
    for e in report.errors:
        typer.secho(f"FAIL: {e}", fg="red")
    if report.ok:
        head = (report.last_hash or "")[:16]
        typer.secho(f"OK: {log}: {report.n_entries} entries, chain intact, head {head}", fg="green")
    else:
        typer.secho(
            f"TAMPERED: {log}: {len(report.errors)} problem(s) in {report.n_entries} entries",
            fg="red",
        )


def show_cmd(
    log: Path = typer.Argument(..., help="Audit log (JSON lines) to list."),
) -> None:
    """List the entries of LOG (event, round, sites, examples, hashes, metrics)."""
    from rich.console import Console
    from rich.table import Table

    from pathfl.fl.trust.audit import AuditLog

    _require_log(log)
    table = Table(title=str(log))
    for col in SHOW_COLUMNS:
        table.add_column(col)
    for e in AuditLog(log).entries():
        table.add_row(*_show_row(e))
    Console().print(table)


def _show_row(e: dict[str, Any]) -> list[str]:
    """One audit entry as the cells of :data:`SHOW_COLUMNS`."""
    sites = e.get("sites")
    out_hash = e.get("model_out_sha256") or e.get("update_sha256") or ""
    info = e.get("reason") or json.dumps(e.get("metrics") or {}, sort_keys=True)
    return [
        str(e.get("seq", "")),
        str(e.get("time_utc", "")),
        str(e.get("event", "")),
        str(e.get("round", "")),
        ",".join(map(str, sites)) if isinstance(sites, list) else str(sites or ""),
        str(e.get("n_examples", "")),
        str(e.get("model_in_sha256") or "")[:12],
        str(out_hash)[:12],
        info[:80],
    ]


def cross_check_cmd(
    server_log: Path = typer.Argument(..., help="The aggregator's audit log of the run."),
    site_logs: list[str] = typer.Argument(..., help="SITE=LOG pairs (each site's own log)."),
) -> None:
    """Check the server log against site logs (models received, updates aggregated).

    Exit 0 if consistent, 1 on a mismatch."""
    from pathfl.fl.trust.audit import cross_check

    pairs: dict[str, str] = {}
    for item in site_logs:
        site, sep, path = item.partition("=")
        if not sep or not site or not Path(path).is_file():
            typer.secho(
                f"error: expected SITE=LOG with an existing LOG, got {item!r}", err=True, fg="red"
            )
            raise typer.Exit(EXIT_USAGE)
        pairs[site] = path
    _require_log(server_log)
    problems = cross_check(server_log, pairs)
    for p in problems:
        typer.secho(f"MISMATCH: {p}", fg="red")
    if not problems:
        typer.secho(f"OK: server log consistent with {', '.join(sorted(pairs))}", fg="green")
    raise typer.Exit(EXIT_TAMPERED if problems else EXIT_OK)
