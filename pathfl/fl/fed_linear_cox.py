"""Federated ``linear-cox`` baseline: a ridge Cox model on mean-pooled tile features (+
covariates), stratified by site, fitted exactly by Newton–Raphson through the real federation.

1. At check-in each site sends the moments of its training rows
   (:func:`pathfl.survival.linear_cox.bag_rows`); the server fits the row standardiser
   (:func:`pathfl.fl.fed_stats.row_standardizer`) — the one a pooled fit would give.
2. Newton iterations (message ``query.linear_cox``): the server sends β (and the row
   standardiser in the run config); each site replies the partial log-likelihood, gradient and
   Hessian of *its own stratum* at β (:func:`pathfl.survival.linear_cox.cox_derivatives` on its
   standardised training rows) and the concordance counts of β on its validation rows. The
   server sums them and takes :func:`pathfl.survival.linear_cox.newton_step` with
   ``alpha = linear_cox_alpha × training patients``, until the step is below ``TOL``.
3. One more request at the final β gives its validation pair counts (and the gradient there).

The result equals ``LinearCox(...).fit(rows of all sites, strata=site)`` on the pooled data.
Skipped (with a logged reason) when DP is on or ``linear_cox: false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from pathfl.fl import aggregate
from pathfl.fl.server_loop import FederationError
from pathfl.fl.trust import records

logger = logging.getLogger(__name__)

TOL = 1e-9  # Newton stops when max |step| < TOL
MAX_ITER = 25
CONFIG_KEY = "linear_cox_rows"  # the row standardiser in the request's run config


def site_derivatives(data: Any, cfg: Mapping[str, Any], arrays: list[np.ndarray]) -> dict:
    """A site's reply to one Newton request: ``arrays`` = [β]."""
    from pathfl.survival.linear_cox import bag_rows, cox_derivatives
    from pathfl.survival.metrics import c_index_from_counts, concordance_counts
    from pathfl.survival.scaling import Standardizer

    if not cfg.get(CONFIG_KEY):
        raise ValueError("a linear-cox request needs the row standardiser in its config")
    scaler = Standardizer.from_dict(cfg[CONFIG_KEY])
    beta = np.asarray(arrays[0], np.float64)

    def rows(bags: list[Any]) -> np.ndarray:
        return scaler.transform(bag_rows(bags)).astype(np.float64)

    z = rows(data.train)
    time_ = np.array([b.time for b in data.train], float)
    event = np.array([b.event for b in data.train], int)
    loglik, grad, hess = cox_derivatives(z, time_, event, beta)
    metrics: dict[str, float] = {
        "loglik": float(loglik),
        "num-examples": float(len(data.train)),
        "n_events": float(event.sum()),
        "val_n_samples": float(len(data.val)),
    }
    if data.val:
        risk = rows(data.val) @ beta
        ev = np.array([b.event for b in data.val], int)
        t = np.array([b.time for b in data.val], float)
        conc, comp, tied = concordance_counts(ev, t, risk)
        metrics.update(
            val_c_index=c_index_from_counts(conc, comp, tied),
            val_n_concordant=float(conc),
            val_n_comparable=float(comp),
            val_n_tied_risk=float(tied),
            val_n_events=float(ev.sum()),
        )
    return {"derivatives": {"gradient": grad, "hessian": hess}, "metrics": metrics}


def _ask(run: Any, beta: np.ndarray, it: int) -> dict[str, tuple[dict, dict]]:
    """One request wave to every accepted site; {site: (derivative arrays, metrics)}.
    Every site must answer (a missing stratum would change the model)."""
    nodes = sorted(run.sites, key=run._name)
    got = run._send(
        records.LINEAR_COX,
        it,
        nodes,
        arrays=[np.asarray(beta, np.float64)],
        group=f"linear-cox-{it}",
    )
    if got.failed or got.missing:
        failed = {run._name(n): r for n, r in got.failed.items()}
        raise FederationError(
            f"linear-cox iteration {it}: failed={failed}, "
            f"no reply={[run._name(n) for n in got.missing]}"
        )
    out = {}
    for node, reply in got.ok.items():
        arrays = records.from_named_array_record(reply.content["derivatives"])
        out[run._name(node)] = (arrays, dict(reply.content["metrics"]))
    return dict(sorted(out.items()))


def fit(run: Any) -> dict[str, Any]:
    """Fit the federated linear-cox for ``run`` (a :class:`pathfl.fl.coordinator.FederatedRun`
    after check-in). Returns the ``linear_cox`` entry of metrics.json (``skipped`` with the
    reason when it was not fitted)."""
    from pathfl.fl.fed_stats import linear_cox_skip_reason
    from pathfl.fl.site import train_config
    from pathfl.survival.linear_cox import fit_newton

    reason = linear_cox_skip_reason(run.cfg)
    if not reason and run.row_scaler is None:
        reason = "the sites sent no row moments at check-in"
    if reason:
        logger.info("federated linear-cox skipped: %s", reason)
        return {"skipped": reason}
    alpha = float(train_config(run.cfg).linear_cox_alpha) * float(run.n_train)
    waves: list[float] = []
    betas: list[np.ndarray] = []
    answers: list[dict[str, Any]] = []

    def parts_at(beta: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        t0 = time.monotonic()
        replies = _ask(run, beta, len(betas) + 1)
        waves.append(time.monotonic() - t0)
        betas.append(np.array(beta))
        answers.append(replies)
        return [(m["loglik"], a["gradient"], a["hessian"]) for a, m in replies.values()]

    t0 = time.monotonic()
    beta, n_iter = fit_newton(parts_at, run.row_scaler.dim, alpha=alpha, max_iter=MAX_ITER, tol=TOL)
    # fit_newton's last evaluation is at the returned beta: its replies carry the final
    # gradient and validation counts (no extra wave)
    final = answers[-1]
    if not np.array_equal(betas[-1], beta):
        final = _ask(run, beta, len(betas) + 1)
    last_step = float(np.max(np.abs(beta - betas[-2]))) if len(betas) > 1 else 0.0
    grad = np.sum([a["gradient"] for a, _ in final.values()], axis=0) - alpha * beta
    per_site = {s: m for s, (_, m) in final.items()}
    counts = [
        (m["val_n_concordant"], m["val_n_comparable"], m.get("val_n_tied_risk", 0.0))
        for m in per_site.values()
        if "val_n_comparable" in m
    ]
    result = {
        "beta": [float(b) for b in beta],
        "iterations": int(n_iter),
        "converged": n_iter < MAX_ITER or last_step < TOL,
        "last_step": last_step,
        "max_abs_gradient": float(np.max(np.abs(grad))),
        "alpha": alpha,
        "row_scaler": run.row_scaler.to_dict(),
        "federated_c_index": aggregate.federated_c_index(counts) if counts else float("nan"),
        "per_site_c_index": {
            s: float(m.get("val_c_index", float("nan"))) for s, m in per_site.items()
        },
        "seconds": time.monotonic() - t0,
        "seconds_per_wave": waves,
    }
    logger.info(
        "federated linear-cox: %d Newton iterations (last step %.2g) in %.1f s, C-index %.3f",
        n_iter,
        last_step,
        result["seconds"],
        result["federated_c_index"],
    )
    return result
