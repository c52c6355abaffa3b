"""`pathfl fl audit verify LOG` / `show LOG` / `cross-check SERVER_LOG SITE=LOG...`: check and
read audit logs.

The fl stage adds these to its ``fl`` typer group with ``register_audit(fl_app)``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

EXIT_OK, EXIT_TAMPERED, EXIT_USAGE = 0, 1, 2


def register_audit(fl_app: typer.Typer) -> None:
    """Add the ``audit`` sub-group (``verify``, ``show``, ``cross-check``) to ``pathfl fl``."""
    audit_app = typer.Typer(
        name="audit",
        help="Check (verify), list (show) or compare (cross-check) hash-chained audit logs.",
        no_args_is_help=True,
    )

    @audit_app.command("verify")
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

        if not log.is_file():
            typer.secho(f"error: {log}: no such audit log", err=True, fg="red")
            raise typer.Exit(EXIT_USAGE)
        report = verify(log, key=key_from_env(key_env), require_head=not allow_missing_head)
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=2))
        else:
            for w in report.warnings:
                typer.secho(f"warning: {w}", fg="yellow")
            for e in report.errors:
                typer.secho(f"FAIL: {e}", fg="red")
            if report.ok:
                typer.secho(
                    f"OK: {log}: {report.n_entries} entries, chain intact, head "
                    f"{(report.last_hash or '')[:16]}",
                    fg="green",
                )
            else:
                typer.secho(
                    f"TAMPERED: {log}: {len(report.errors)} problem(s) in "
                    f"{report.n_entries} entries",
                    fg="red",
                )
        raise typer.Exit(EXIT_OK if report.ok else EXIT_TAMPERED)

    @audit_app.command("show")
    def show_cmd(
        log: Path = typer.Argument(..., help="Audit log (JSON lines) to list."),
    ) -> None:
        """List the entries of LOG (event, round, sites, examples, hashes, metrics)."""
        from rich.console import Console
        from rich.table import Table

        from pathfl.fl.trust.audit import AuditLog

        if not log.is_file():
            typer.secho(f"error: {log}: no such audit log", err=True, fg="red")
            raise typer.Exit(EXIT_USAGE)
        table = Table(title=str(log))
        for col in (
            "seq",
            "time",
            "event",
            "round",
            "sites",
            "n",
            "model in",
            "out/update",
            "info",
        ):
            table.add_column(col)
        for e in AuditLog(log).entries():
            sites = e.get("sites")
            out_hash = e.get("model_out_sha256") or e.get("update_sha256") or ""
            info = e.get("reason") or json.dumps(e.get("metrics") or {}, sort_keys=True)
            table.add_row(
                str(e.get("seq", "")),
                str(e.get("time_utc", "")),
                str(e.get("event", "")),
                str(e.get("round", "")),
                ",".join(map(str, sites)) if isinstance(sites, list) else str(sites or ""),
                str(e.get("n_examples", "")),
                str(e.get("model_in_sha256") or "")[:12],
                str(out_hash)[:12],
                info[:80],
            )
        Console().print(table)

    @audit_app.command("cross-check")
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
                    f"error: expected SITE=LOG with an existing LOG, got {item!r}",
                    err=True,
                    fg="red",
                )
                raise typer.Exit(EXIT_USAGE)
            pairs[site] = path
        if not server_log.is_file():
            typer.secho(f"error: {server_log}: no such audit log", err=True, fg="red")
            raise typer.Exit(EXIT_USAGE)
        problems = cross_check(server_log, pairs)
        for p in problems:
            typer.secho(f"MISMATCH: {p}", fg="red")
        if not problems:
            typer.secho(f"OK: server log consistent with {', '.join(sorted(pairs))}", fg="green")
        raise typer.Exit(EXIT_TAMPERED if problems else EXIT_OK)

    fl_app.add_typer(audit_app, name="audit")
