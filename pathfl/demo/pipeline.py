"""`pathfl demo`: generate the cohort → tile → extract → federate (real processes) → evaluate
→ report. Each stage calls the project's own command (``python -m pathfl <stage> ...``, the
same code path a user runs) or public Python API; a stage that cannot run here (it raises
:class:`StageUnavailableError`, or a module it needs is missing) is reported by name as
*unavailable* and nothing after it is pretended."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pathfl.io import sha256_json, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from pathfl.demo.evaluate import Evaluation

log = logging.getLogger(__name__)

STATUSES = ("ok", "unavailable", "failed", "not run")

# The run config the demo hands to `pathfl fl simulate --config`: on top of the library
# defaults (FL_DEFAULTS of pathfl.fl.fl_config and TrainConfig) — the demo tunes nothing —
# only the evaluation split is set, and the tiny (CI) demo syncs in fewer rounds: with the
# automatic local step budget the total number of optimizer steps is the same (rounds × steps
# per round = pooled budget).
DEMO_FL_CONFIG: dict[str, Any] = {
    "val_folds": 3,  # each site scores every model on 1/3 of its patients
}
DEMO_FL_CONFIG_TINY: dict[str, Any] = {"rounds": 3, "val_folds": 2}  # --tiny: on top of it


class StageUnavailableError(RuntimeError):
    """A stage cannot run in this installation (reported as *unavailable*, not as failed)."""


class StageFailedError(RuntimeError):
    """A stage ran and failed; the message says where to look."""


@dataclass
class StageStatus:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""
    cpu_s: float = 0.0  # user+sys of this process and its waited-for children
    load_avg: float | None = None  # 1-min load average when the stage ended


@dataclass
class DemoConfig:
    """Options of one demo run (see ``configs/demo.yaml``)."""

    out: Path
    tiny: bool = False
    seed: int = 0
    workers: int = 2
    rounds: int | None = None  # None: the library default
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
    evaluation: Evaluation | None = None
    report_path: Path | None = None

    @property
    def complete(self) -> bool:
        return all(s.status == "ok" for s in self.stages.values())


# ----------------------------------------------------------------------------------------------
def run_cli(args: list[str], *, log_path: Path, label: str) -> int:
    """Run ``python -m pathfl ARGS`` as a child process; its output goes to ``log_path`` and
    the last lines are logged when it fails. Returns the exit code."""
    from pathfl.fl.flower import lifetime

    # -P: a ./pathfl folder in the caller's working directory is not imported instead
    cmd = lifetime.python_module_argv("pathfl", *args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s", label, " ".join(_short(a) for a in cmd[1:]))
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    with open(log_path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        # own session: Ctrl-C/SIGTERM reach it once, forwarded; it dies with the demo
        proc = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=lifetime.child_env(lifetime.python_env(env)),
            start_new_session=True,
            preexec_fn=lifetime.die_with_parent(),  # only prctl: see lifetime
        )
        lifetime.wait_forwarding_signals(proc)
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
    c = state.config
    out = c.work_dir / "features"
    rc = run_cli(
        [
            "extract",
            "--tiles",
            str(c.work_dir / "tiles"),
            "--out",
            str(out),
            "--overwrite",  # the demo owns work/: features must follow re-made tiles
        ],
        log_path=c.work_dir / "logs" / "extract.log",
        label="extract",
    )
    return _manifest_summary(out, rc, "extract")


def _manifest_summary(out: Path, rc: int, stage: str) -> str:
    from pathfl.io import Manifest

    # DESIGN puts the manifest at OUT/manifest.csv; extract keeps it beside the features
    path = next(
        (p for p in (out / "manifest.csv", out / "features" / "manifest.csv") if p.is_file()),
        out / "manifest.csv",
    )
    m = Manifest.load(path)
    counts = m.status_counts()
    n_tiles = sum(int(r["n_tiles"] or 0) for r in m.rows.values() if r["status"] != "failed")
    if rc not in (0, 1) or counts["ok"] + counts["skipped"] == 0:
        raise StageFailedError(f"`pathfl {stage}` exited with {rc}; see {out.parent / 'logs'}")
    failed = [sid for sid, r in m.rows.items() if r["status"] == "failed"]
    msg = f"{counts['ok'] + counts['skipped']} slides, {n_tiles} tiles"
    if failed:
        msg += f"; {len(failed)} failed ({', '.join(failed[:3])}…) — see {path}"
    return msg


def stage_sites(state: DemoState) -> str:
    from pathfl.demo.sites import prepare_sites

    state.split = prepare_sites(state.config, state.cohort)
    n = {k: v["n_patients"] for k, v in state.split["sites"].items()}
    msg = "site folders: " + ", ".join(f"{k} {v} patients" for k, v in n.items())
    if state.split["missing_features"]:
        msg += f"; {len(state.split['missing_features'])} slide(s) without features left out"
    return msg


def stage_federate(state: DemoState) -> str:
    c = state.config
    run = c.work_dir / "fl_run"
    fl_cfg = fl_run_config(c)
    cfg_path = c.work_dir / "fl_config.yaml"
    write_text_atomic(cfg_path, yaml.safe_dump(fl_cfg, sort_keys=True))
    feature_files = sorted(Path(state.split["features_dir"]).glob("*.h5"))
    stamp = {
        "fl_config": fl_cfg,
        "sites": state.split,
        "cohort": state.cohort.get("fingerprint"),
        "features": sha256_json(
            [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in feature_files]
        ),
    }
    stamp_path = run / "demo_stamp.json"
    if (
        (run / "model.pt").is_file()
        and stamp_path.is_file()
        and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))
    ):
        state.fl_run = run
        return f"run dir {run} (up to date, reused)"
    if run.exists():  # a fresh federation: re-registering the old site keys fails
        shutil.rmtree(run)
    args = ["fl", "simulate"]
    for site_dir in state.split["site_dirs"]:
        args += ["--site", str(site_dir)]
    # --no-baselines: the demo trains the pooled/local-only baselines itself (evaluate stage)
    # so that it has their per-patient predictions for CIs and KM curves
    args += ["--out", str(run), "--config", str(cfg_path), "--no-baselines"]
    rc = run_cli(args, log_path=c.work_dir / "logs" / "fl_simulate.log", label="fl simulate")
    if rc != 0:
        raise StageFailedError(
            f"`pathfl fl simulate` exited with {rc}; see {c.work_dir / 'logs' / 'fl_simulate.log'}"
        )
    write_json_atomic(stamp_path, stamp)
    state.fl_run = run
    return f"run dir {run}"


def fl_run_config(c: DemoConfig) -> dict[str, Any]:
    cfg = dict(DEMO_FL_CONFIG)
    if c.tiny:
        cfg.update(DEMO_FL_CONFIG_TINY)
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
    ev = state.evaluation.summary
    fed = ev["models"]["federated"]
    return (
        f"{ev['n_val_patients']} validation patients; federated C {fed['c_index']:.3f}, "
        f"pooled {ev['models']['pooled']['c_index']:.3f}, local-only mean "
        f"{ev['local_only_mean_c_index']:.3f}, oracle {ev['models']['oracle']['c_index']:.3f}"
    )


def stage_report(state: DemoState) -> str:
    from pathfl.demo.report import write_report

    state.report_path = write_report(state)
    return str(state.report_path)


STAGES: list[tuple[str, Callable[[DemoState], str]]] = [
    ("generate", stage_generate),
    ("tile", stage_tile),
    ("extract", stage_extract),
    ("sites", stage_sites),
    ("federate", stage_federate),
    ("evaluate", stage_evaluate),
]


def cpu_seconds() -> float:
    """CPU time (user + sys) of this process and of its children that have been waited for."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


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
        t0, c0 = time.perf_counter(), cpu_seconds()
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
        st.seconds, st.cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
        st.load_avg = load_average()
        if on_stage:
            on_stage(st)
        if st.status != "ok":
            break
    st = state.stages["report"]
    t0 = time.perf_counter()
    st.status, st.detail = "ok", str(config.out / "report.md")
    stage_report(state)
    st.seconds = time.perf_counter() - t0
    if on_stage:
        on_stage(st)
    return state
