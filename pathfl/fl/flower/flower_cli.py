"""Talking to a SuperLink through Flower's ``flwr`` CLI, so users never hand-write Flower
configuration: a private ``FLWR_HOME`` naming one connection, the pathfl Flower app folder,
site registration, run submission, status and stop."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from pathfl.fl.flower.processes import FlowerProcessError, bin_path, flower_env

logger = logging.getLogger(__name__)

CONNECTION = "pathfl"
APP_NAME = "pathfl-fl"


def write_flwr_home(home: Path, *, server: str, root_cert: Path | None) -> Path:
    """A private FLWR_HOME whose config.toml names one SuperLink connection ``pathfl``."""
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f"address = {json.dumps(server)}",
    ]
    if root_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_cert).resolve()))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def write_app(app_dir: Path) -> Path:
    """The Flower app project: only a pyproject.toml whose components point at pathfl's
    installed ServerApp/ClientApp (no code is shipped in the FAB; every host runs its own
    installed pathfl, whose code hash goes into the audit logs)."""
    from pathfl import __version__

    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "pathfl federated survival training (app components live in pathfl)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pathfl"

[tool.flwr.app.components]
serverapp = "pathfl.fl.flower.server_app:app"
clientapp = "pathfl.fl.flower.client_app:app"

[tool.flwr.app.config]
pathfl-config = "{{}}"
out-dir = ""
resume = false
"""
    )
    return app_dir


def flwr_cli(home: Path, args: list[str], *, timeout_s: float = 120.0) -> str:
    """Run ``flwr ARGS`` against the connection in ``home``. Its working directory is
    ``home``: flwr reads ``./pyproject.toml`` and takes an argument naming a folder there
    (``pathfl``!) for an app to migrate, so the caller's folder must not count; paths in
    ``args`` must be absolute."""
    home = Path(home).resolve()
    argv = [bin_path("flwr"), *args]
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=flower_env(home),
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        cwd=home,
    )
    if res.returncode != 0:
        raise FlowerProcessError(
            f"`flwr {' '.join(args)}` failed (exit {res.returncode}): "
            f"{(res.stdout + res.stderr).strip()[-2000:]}"
        )
    return res.stdout


def _json_out(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise FlowerProcessError(f"no JSON in flwr output: {text[-500:]}")
    return json.loads(text[start:])


def register_site(home: Path, pub_key: Path, name: str) -> int | None:
    """Register a site's public key with the SuperLink; returns the node id, or None when the
    key is already registered in this SuperLink's state database (e.g. a rerun into the same
    folder, or a restarted aggregator) — that is not an error."""
    text = flwr_cli(
        home,
        [
            *("supernode", "register", str(Path(pub_key).resolve()), CONNECTION),
            *("--name", name, "--format", "json"),
        ],
    )
    out = _json_out(text)
    if "node-id" in out:
        return int(out["node-id"])
    message = str(out.get("error-message") or out.get("error") or out)
    if "already in use" in message:
        logger.info("site %s: key %s already registered", name, pub_key)
        return None
    raise FlowerProcessError(f"registering site {name!r} ({pub_key}) failed: {message}")


def submit_run(
    home: Path, app_dir: Path, *, cfg: dict[str, Any], out_dir: Path, resume: bool
) -> int:
    """Start a run of pathfl's app on the SuperLink; returns the Flower run id."""
    import tomli_w

    app_dir = Path(app_dir).resolve()
    override = app_dir / "run_config.toml"
    override.write_text(
        tomli_w.dumps(
            {"pathfl-config": json.dumps(cfg), "out-dir": str(out_dir), "resume": bool(resume)}
        )
    )
    out = _json_out(
        flwr_cli(
            home,
            ["run", str(app_dir), CONNECTION, "--run-config", str(override), "--format", "json"],
        )
    )
    if not out.get("success"):
        raise FlowerProcessError(f"run was not started: {out}")
    return int(out["run-id"])


def run_status(home: Path, run_id: int) -> str:
    out = _json_out(flwr_cli(home, ["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]))
    runs = out.get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def stop_run(home: Path, run_id: int, *, timeout_s: float = 120.0) -> None:
    """Ask the SuperLink to stop the run (errors and timeouts are ignored: best effort)."""
    with contextlib.suppress(FlowerProcessError, subprocess.TimeoutExpired):
        flwr_cli(home, ["stop", str(run_id), CONNECTION], timeout_s=timeout_s)
