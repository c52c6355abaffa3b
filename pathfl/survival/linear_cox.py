"""``linear-cox``: the baseline reported beside every model — a ridge-penalised Cox model on
mean-pooled tile features (+ covariates), fitted exactly by Newton–Raphson.

The objective (as scikit-survival's ``CoxPHSurvivalAnalysis(alpha=...)``, Breslow ties) is

    f(β) = -Σ_s ℓ_s(β) + ½ · α · ||β||²,      α = ``alpha_per_patient`` · n_patients

where ``ℓ_s`` is the partial log-likelihood of stratum ``s`` (each site is its own stratum in
a federation, so risk sets never mix sites). Newton needs only ``Σ_s ∇ℓ_s`` and ``Σ_s ∇²ℓ_s``:
:func:`cox_derivatives` computes them for one stratum, so a federation sums the sites'
replies and takes exactly the step a pooled fit would take (:func:`newton_step`).

Inputs are standardised per column with training statistics (:class:`Standardizer`), so the
penalty treats every column alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pathfl.survival.scaling import Standardizer

Derivatives = tuple[float, np.ndarray, np.ndarray]  # (log-lik, gradient, Hessian of log-lik)


def cox_derivatives(
    x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray
) -> Derivatives:
    """Partial log-likelihood (Breslow ties) of one stratum and its gradient and Hessian at
    ``beta``. ``x`` (n, d) float64. O(n·d²)."""
    x = np.asarray(x, np.float64)
    time, event = np.asarray(time, np.float64), np.asarray(event).astype(bool)
    d = x.shape[1]
    if not event.any():
        return 0.0, np.zeros(d), np.zeros((d, d))
    with np.errstate(all="ignore"):  # a trial step far off gives inf/nan: the caller halves it
        return _derivatives(x, time, event, beta)


def _derivatives(
    x: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray
) -> Derivatives:
    eta = x @ beta
    shift = eta.max()
    w = np.exp(eta - shift)
    order = np.argsort(-time, kind="stable")  # descending time: risk sets are prefixes
    ts, ws, xs = time[order], w[order], x[order]
    s0 = np.cumsum(ws)
    s1 = np.cumsum(ws[:, None] * xs, axis=0)
    # the risk set of time t = every subject with time >= t: the last index of its tie group
    last = np.searchsorted(-ts, -ts, side="right") - 1
    ev_pos = np.flatnonzero(event[order])
    r0, r1 = s0[last[ev_pos]], s1[last[ev_pos]]
    xbar = r1 / r0[:, None]
    loglik = float((eta[order][ev_pos] - shift - np.log(r0)).sum())
    grad = (xs[ev_pos] - xbar).sum(axis=0)
    # Σ_events S2(R)/S0(R) = Σ_j w_j x_j x_jᵀ · Σ_{events i: t_i <= t_j} 1/S0(R_i)
    inv = np.zeros(len(ts))
    np.add.at(inv, last[ev_pos], 1.0 / r0)
    # subject j is at risk for event i iff pos_j <= last[i]: a reverse cumulative sum
    c = np.cumsum(inv[::-1])[::-1]
    hess = -((xs * (ws * c)[:, None]).T @ xs - xbar.T @ xbar)
    return loglik, grad, hess


def newton_step(
    beta: np.ndarray, parts: Sequence[Derivatives], *, alpha: float
) -> tuple[np.ndarray, float]:
    """One Newton step on the penalised objective from the strata's summed derivatives.
    Returns ``(new beta, objective at beta)``."""
    loglik = sum(p[0] for p in parts)
    grad = np.sum([p[1] for p in parts], axis=0) - alpha * beta
    hess = np.sum([p[2] for p in parts], axis=0) - alpha * np.eye(len(beta))
    step = np.linalg.solve(-hess, grad)
    return beta + step, float(-loglik + 0.5 * alpha * beta @ beta)


def bag_rows(bags: Sequence[Any]) -> np.ndarray:
    """One row per patient: the mean of its tile features, then its covariates."""
    rows = []
    for b in bags:
        r = np.asarray(b.features, np.float64).mean(axis=0)
        if b.covariates is not None:
            r = np.concatenate([r, np.asarray(b.covariates, np.float64)])
        rows.append(r)
    return np.stack(rows)


@dataclass
class LinearCox:
    """Ridge Cox on standardised rows, fitted exactly (Newton, ≤ ``max_iter`` steps, until
    the step is below ``tol``). Fitted attributes end in ``_``. Higher risk = worse."""

    alpha_per_patient: float = 1.0
    max_iter: int = 50
    tol: float = 1e-9
    coef_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scaler_: Standardizer = field(default_factory=Standardizer)
    n_iter_: int = 0

    def penalty(self, n_patients: int) -> float:
        return float(self.alpha_per_patient) * float(n_patients)

    def fit(
        self,
        x: np.ndarray,
        *,
        time: np.ndarray,
        event: np.ndarray,
        strata: np.ndarray | None = None,
    ) -> LinearCox:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) != len(time) or len(x) != len(event):
            raise ValueError(f"x {x.shape}, time {np.shape(time)}, event {np.shape(event)}")
        self.scaler_ = Standardizer.fit(x)
        z = self.scaler_.transform(x).astype(np.float64)
        strata = np.zeros(len(x), int) if strata is None else np.asarray(strata)
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
        time, event = np.asarray(time, float), np.asarray(event, int)

        def parts(beta: np.ndarray) -> list[Derivatives]:
            return [cox_derivatives(z[g], time[g], event[g], beta) for g in groups]

        self.coef_, self.n_iter_ = fit_newton(
            parts, x.shape[1], alpha=self.penalty(len(x)), max_iter=self.max_iter, tol=self.tol
        )
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Log-risk of each row."""
        return self.scaler_.transform(np.asarray(x, np.float64)).astype(np.float64) @ self.coef_


def objective(parts: Sequence[Derivatives], beta: np.ndarray, *, alpha: float) -> float:
    """The penalised objective ``-Σ ℓ_s(β) + ½ α ||β||²`` from the strata's log-likelihoods."""
    return float(-sum(p[0] for p in parts) + 0.5 * alpha * beta @ beta)


def fit_newton(
    parts_at: Any, dim: int, *, alpha: float, max_iter: int = 50, tol: float = 1e-9
) -> tuple[np.ndarray, int]:
    """Newton–Raphson from β = 0 with step halving (a step that does not lower the objective
    is halved, up to 30 times). ``parts_at(beta)`` returns the strata's derivatives at
    ``beta`` — in a federation, one round of the sites' replies; every call of it is one
    evaluation, so pooled and federated fits take the same sequence of steps. Returns
    ``(beta, iterations)``."""
    beta = np.zeros(dim)
    parts = parts_at(beta)
    f = objective(parts, beta, alpha=alpha)
    for it in range(1, max_iter + 1):
        new, _ = newton_step(beta, parts, alpha=alpha)
        for _ in range(30):
            new_parts = parts_at(new)
            f_new = objective(new_parts, new, alpha=alpha)
            if np.isfinite(f_new) and f_new <= f + 1e-12 * max(1.0, abs(f)):
                break
            new = 0.5 * (beta + new)
        done = float(np.max(np.abs(new - beta))) < tol
        beta, parts, f = new, new_parts, f_new
        if done:
            return beta, it
    return beta, max_iter
