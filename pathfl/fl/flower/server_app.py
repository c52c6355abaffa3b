"""pathfl's Flower ServerApp: reads the run config Flower hands it, runs
:class:`pathfl.fl.coordinator.FederatedRun` (resuming from the run dir's checkpoint when asked)
and writes the final model with the same ``save_run`` as ``pathfl train``.

Flower run-config keys (written by ``pathfl fl run``; users never write them by hand):
``pathfl-config`` (the effective federated config as JSON), ``out-dir`` (run dir on the
aggregator host), ``resume`` (bool).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from pathfl.fl.coordinator import FederatedRun
from pathfl.fl.rundir import RunDir

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from pathfl.fl.flower.lifetime import watch_parent

    watch_parent()  # the pathfl command that started the SuperLink is gone → stop
    rc = context.run_config
    cfg = json.loads(str(rc["pathfl-config"]))
    run_dir = RunDir(str(rc["out-dir"]))
    run_dir.root.mkdir(parents=True, exist_ok=True)
    run_federation(grid, cfg, run_dir, run_id=str(context.run_id), resume=bool(rc["resume"]))


def run_federation(
    grid: Any, cfg: dict[str, Any], run_dir: RunDir, *, run_id: str, resume: bool
) -> None:
    """The whole server side of one run; status.json says how it ended."""
    t0 = time.time()
    run_dir.write_status("running", run_id=run_id)
    run = FederatedRun(grid, cfg, run_dir, run_id=run_id)
    try:
        start = 1
        ckpt = run_dir.load_checkpoint() if resume else None
        if ckpt is not None:
            # one logical run id across resumes: audit entries and the sites' DP ledgers
            # (keyed by run id) continue instead of starting over
            run.run_id = run.audit.run_id = str(ckpt[0].get("run_id") or run_id)
        run.check_in()
        if ckpt is not None:
            state, run.names, run.arrays = ckpt
            _check_resume(run, state)
            start = int(state["round"]) + 1
            run.audit.append("resume", round=int(state["round"]), flower_run_id=run_id)
            logger.info("resuming after round %d", start - 1)
        else:
            run.init_model()
        run.audit.append(
            "start",
            config=cfg,
            time_bins=run.time_bins,
            sites=sorted(run.sites.values()),
            first_round=start,
        )
        rows = [r for r in run_dir.read_rounds() if int(r["round"]) < start]
        for r in range(start, int(cfg["rounds"]) + 1):
            rows.append(run.run_round(r))
            run_dir.write_status("running", run_id=run_id, completed_round=r)
        final = run.final_evaluation(int(cfg["rounds"]))
        final["linear_cox"] = _linear_cox(run)
        _save_final(run, cfg, run_dir, rows, final, seconds=time.time() - t0)
        run.audit.append("finish", metrics={"federated_c_index": final["federated_c_index"]})
        run_dir.write_status("completed", run_id=run_id, rounds=int(cfg["rounds"]))
    except Exception as e:
        logger.error("federated run failed: %s", e)
        # an orphaned ServerApp of a killed aggregator must not mark a resumed run as failed
        if run_dir.read_status().get("run_id", run_id) == run_id:
            run_dir.write_status("failed", run_id=run_id, message=str(e))
        run.audit.append("failed", reason=str(e), flower_run_id=run_id)
        raise


def _linear_cox(run: FederatedRun) -> dict[str, Any]:
    """The federated linear-cox baseline; a failure is recorded, never fatal to the run."""
    from pathfl.fl import fed_linear_cox
    from pathfl.fl.server_loop import FederationError

    try:
        result = fed_linear_cox.fit(run)
    except (FederationError, np.linalg.LinAlgError, KeyError, ValueError) as e:
        logger.warning("federated linear-cox failed: %s", e)
        run.audit.append("linear_cox_failed", reason=str(e))
        return {"skipped": f"failed: {e}"}
    keep = ("skipped", "beta", "iterations", "converged", "federated_c_index")
    run.audit.append("linear_cox", **{k: result[k] for k in keep if k in result})
    return result


def _check_resume(run: FederatedRun, state: dict[str, Any]) -> None:
    from pathfl.fl.server_loop import FederationError
    from pathfl.fl.server_opt import load_state
    from pathfl.survival.scaling import BagScaler

    if state.get("time_bins") != run.time_bins:
        # the bins were fixed before round 1 of the interrupted run: keep them
        run.time_bins = [float(x) for x in state.get("time_bins", [])]
    # so were the scaler and the step budget (a site missing now must not change them)
    if "scaler" in state:
        run.scaler = BagScaler.from_dict(state["scaler"]) if state["scaler"] else None
    if "steps_per_round" in state:
        run.steps_per_round = int(state["steps_per_round"])
    run.opt_state = load_state(run.dir.root, state)  # the server optimiser continues
    missing = sorted(set(state.get("sites", [])) - set(run.sites.values()))
    if missing:
        logger.warning("resuming without site(s) %s that took part before", missing)
    if int(state.get("feature_dim", run.feature_dim)) != run.feature_dim:
        raise FederationError(
            f"checkpoint feature_dim {state.get('feature_dim')} != sites' {run.feature_dim}"
        )


def _save_final(
    run: FederatedRun,
    cfg: dict[str, Any],
    run_dir: RunDir,
    rows: list[dict[str, Any]],
    final: dict[str, Any],
    *,
    seconds: float,
) -> None:
    from pathfl.fl.fl_config import strategy_name
    from pathfl.fl.site import train_config
    from pathfl.fl.trust.records import arrays_to_state
    from pathfl.survival.run import save_run

    tcfg = train_config(cfg)
    model = run.build_model()
    model.load_state_dict(arrays_to_state(run.names, run.arrays))
    history = [
        {
            "round": r["round"],
            "federated_c_index_prev_global": r["federated_c_index_prev_global"],
            "seconds": r.get("seconds"),
            "n_sites": len(r.get("sites", {})),
        }
        for r in rows
    ]
    metrics = {
        "mode": "federated",
        "strategy": strategy_name(cfg),
        "aggregation": cfg["aggregation"],
        "federated_c_index": final["federated_c_index"],
        "final_per_site": final["per_site"],
        "rounds": history,
        "sites": sorted(run.sites.values()),
        "n_train_patients": run.n_train,
        "steps_per_round": run.steps_per_round,
        "linear_cox": final.get("linear_cox", {}),
        "seconds": seconds,
        "note": "federated C-index = within-site pairs pooled over sites; cross-site pairs "
        "are not compared",
    }
    save_run(
        run_dir.root,
        model,
        tcfg,
        feature_dim=run.feature_dim,
        fingerprint=run.fingerprint,
        time_bins=np.asarray(run.time_bins, dtype=float),
        scaler=run.scaler,
        metrics=metrics,
        predictions=None,
    )
