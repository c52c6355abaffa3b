"""`pathfl demo`: generate the cohort → tile → extract → federate (real processes) → evaluate
→ report. Each stage calls the project's own command (``python -m pathfl <stage> ...``, the
same code path a user runs) or public Python API; a stage that is not built yet is reported by
name as *unavailable* and nothing after it is pretended."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathfl.io import write_text_atomic

log = logging.getLogger(__name__)

STATUSES = ("ok", "unavailable", "failed", "not run")

# Run config handed to `pathfl fl simulate --config` (keys of the fl stage's run config).
FL_DEFAULTS: dict[str, Any] = {
    "rounds": 10,
    "local_epochs": 2,
    "lr": 5e-4,
    "model": "abmil",
    "loss": "nll",
    "n_bins": 4,
    "proximal_mu": 0.0,
}
FL_TINY: dict[str, Any] = {"rounds": 3, "local_epochs": 3, "lr": 1e-3}


class StageUnavailableError(RuntimeError):
    """A stage of the pipeline is not implemented (yet) in this checkout."""


class StageFailedError(RuntimeError):
    """A stage ran and failed; the message says where to look."""


@dataclass
class StageStatus:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class DemoConfig:
    """Options of one demo run (see ``configs/demo.yaml``)."""

    out: Path
    tiny: bool = False
    seed: int = 0
    workers: int = 2
    test_fraction: float = 1 / 3
    rounds: int | None = None  # None: FL_DEFAULTS
    local_epochs: int | None = None
    fl_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def cohort_dir(self) -> Path:
        return self.out / "cohort"

    @property
    def work_dir(self) -> Path:
        return self.out / "work"


@dataclass
class DemoState:
    """What the stages produced so far (paths and summaries), handed to the report."""

    config: DemoConfig
    stages: dict[str, StageStatus] = field(default_factory=dict)
    cohort: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    fl_run: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None

    @property
    def complete(self) -> bool:
        return all(s.status == "ok" for s in self.stages.values())


# ----------------------------------------------------------------------------------------------
def cli_has_command(*names: str) -> bool:
    """Whether ``pathfl <names...>`` exists in this checkout (without running it)."""
    import click
    import typer

    from pathfl.cli import app

    cmd: click.Command = typer.main.get_command(app)
    for name in names:
        if not isinstance(cmd, click.Group) or name not in cmd.commands:
            return False
        cmd = cmd.commands[name]
    return True


def run_cli(args: list[str], *, log_path: Path, label: str) -> int:
    """Run ``python -m pathfl ARGS`` as a child process; its output goes to ``log_path`` and
    the last lines are logged when it fails. Returns the exit code."""
    cmd = [sys.executable, "-m", "pathfl", *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", label, " ".join(_short(a) for a in cmd[1:]))
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    with open(log_path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode not in (0, 1):
        tail = log_path.read_text().splitlines()[-15:]
        log.error(
            "%s exited with %d; last lines of %s:\n%s",
            label,
            proc.returncode,
            log_path,
            "\n".join(tail),
        )
    return proc.returncode


def _short(a: str) -> str:
    return a if len(a) < 80 else "…" + a[-60:]


# ----------------------------------------------------------------------------------------------
def stage_generate(state: DemoState) -> str:
    from pathfl.demo.cohort import generate_cohort

    c = state.config
    state.cohort = generate_cohort(c.cohort_dir, tiny=c.tiny, seed=c.seed, workers=c.workers)
    s = state.cohort
    return (
        f"{s['n_patients']} patients, {s['n_slides']} slides, {s['n_events']} events; "
        f"oracle C-index {s['oracle_c_index']:.3f}"
    )


def stage_tile(state: DemoState) -> str:
    if not cli_has_command("tile"):
        raise StageUnavailableError("`pathfl tile` is not available in this checkout yet")
    c = state.config
    slide_dirs = [str(c.cohort_dir / s["dir"] / "slides") for s in state.cohort["sites"].values()]
    out = c.work_dir / "tiles"
    rc = run_cli(
        ["tile", *slide_dirs, "--out", str(out), "--workers", str(c.workers)],
        log_path=c.work_dir / "logs" / "tile.log",
        label="tile",
    )
    return _manifest_summary(out, rc, "tile")


def stage_extract(state: DemoState) -> str:
    if not cli_has_command("extract"):
        raise StageUnavailableError("`pathfl extract` is not available in this checkout yet")
    c = state.config
    out = c.work_dir / "features"
    rc = run_cli(
        ["extract", "--tiles", str(c.work_dir / "tiles"), "--out", str(out)],
        log_path=c.work_dir / "logs" / "extract.log",
        label="extract",
    )
    return _manifest_summary(out, rc, "extract")


def _manifest_summary(out: Path, rc: int, stage: str) -> str:
    from pathfl.io import Manifest

    m = Manifest.load(out / "manifest.csv")
    counts = m.status_counts()
    n_tiles = sum(int(r["n_tiles"] or 0) for r in m.rows.values() if r["status"] != "failed")
    if rc not in (0, 1) or counts["ok"] + counts["skipped"] == 0:
        raise StageFailedError(f"`pathfl {stage}` exited with {rc}; see {out.parent / 'logs'}")
    failed = [sid for sid, r in m.rows.items() if r["status"] == "failed"]
    msg = f"{counts['ok'] + counts['skipped']} slides, {n_tiles} tiles"
    if failed:
        msg += f"; {len(failed)} failed ({', '.join(failed[:3])}…) — see {out / 'manifest.csv'}"
    return msg


def stage_split(state: DemoState) -> str:
    from pathfl.demo.sites import prepare_sites

    state.split = prepare_sites(state.config, state.cohort)
    n_tr = sum(v["n_train"] for v in state.split["sites"].values())
    n_te = sum(v["n_test"] for v in state.split["sites"].values())
    return f"{n_tr} training patients at 3 sites; {n_te} held out for testing"


def stage_federate(state: DemoState) -> str:
    if not cli_has_command("fl", "simulate"):
        raise StageUnavailableError("`pathfl fl simulate` is not available in this checkout yet")
    c = state.config
    run = c.work_dir / "fl_run"
    fl_cfg = fl_run_config(c)
    cfg_path = c.work_dir / "fl_config.yaml"
    write_text_atomic(cfg_path, yaml.safe_dump(fl_cfg, sort_keys=True))
    args = ["fl", "simulate"]
    for site_dir in state.split["site_dirs"]:
        args += ["--site", str(site_dir)]
    args += ["--out", str(run), "--config", str(cfg_path)]
    rc = run_cli(args, log_path=c.work_dir / "logs" / "fl_simulate.log", label="fl simulate")
    if rc != 0:
        raise StageFailedError(
            f"`pathfl fl simulate` exited with {rc}; see {c.work_dir / 'logs' / 'fl_simulate.log'}"
        )
    state.fl_run = run
    return f"run dir {run}"


def fl_run_config(c: DemoConfig) -> dict[str, Any]:
    cfg = dict(FL_DEFAULTS)
    if c.tiny:
        cfg.update(FL_TINY)
    cfg["seed"] = c.seed
    if c.rounds is not None:
        cfg["rounds"] = int(c.rounds)
    if c.local_epochs is not None:
        cfg["local_epochs"] = int(c.local_epochs)
    cfg.update(c.fl_overrides)
    return cfg


def stage_evaluate(state: DemoState) -> str:
    from pathfl.demo.evaluate import evaluate_models

    state.evaluation = evaluate_models(state.config, state.split, state.fl_run, state.cohort)
    fed = state.evaluation["models"].get("federated", {})
    return f"federated C-index on held-out patients {fed.get('c_index', float('nan')):.3f}"


def stage_report(state: DemoState) -> str:
    from pathfl.demo.report import write_report

    state.report_path = write_report(state)
    return str(state.report_path)


STAGES: list[tuple[str, Callable[[DemoState], str]]] = [
    ("generate", stage_generate),
    ("tile", stage_tile),
    ("extract", stage_extract),
    ("split", stage_split),
    ("federate", stage_federate),
    ("evaluate", stage_evaluate),
]


def run_demo(
    config: DemoConfig,
    *,
    on_stage: Callable[[StageStatus], None] | None = None,
) -> DemoState:
    """Run every stage in order; stop at the first unavailable/failed one; always write the
    report of what was done."""
    state = DemoState(config)
    for name, _ in STAGES:
        state.stages[name] = StageStatus(name)
    state.stages["report"] = StageStatus("report")
    for name, fn in STAGES:
        st = state.stages[name]
        t0 = time.perf_counter()
        try:
            st.detail = fn(state)
            st.status = "ok"
        except StageUnavailableError as e:
            st.status, st.detail = "unavailable", str(e)
        except ImportError as e:
            st.status, st.detail = "unavailable", f"a module it needs is missing: {e}"
        except StageFailedError as e:
            st.status, st.detail = "failed", str(e)
        except Exception as e:
            log.exception("demo stage %s failed", name)
            st.status, st.detail = "failed", f"{type(e).__name__}: {e}"
        st.seconds = time.perf_counter() - t0
        if on_stage:
            on_stage(st)
        if st.status != "ok":
            break
    st = state.stages["report"]
    t0 = time.perf_counter()
    st.detail = stage_report(state)
    st.status, st.seconds = "ok", time.perf_counter() - t0
    if on_stage:
        on_stage(st)
    return state
