"""Server-side optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"; Hsu et al.
2019 for server momentum): the server first averages the sites' weights (FedAvg, weighted by
patients), takes the *pseudo-gradient* ``Δ = average - current global`` and moves the global
model with an optimiser step on ``Δ`` instead of replacing it by the average.

Pure functions ``(current weights, Δ, state) -> (new weights, new state)``; the state
(:class:`OptState`: step count, first and second moments) lives on the server only — it is
checkpointed with the run (``rounds/server_opt_NNN.npz``, named in ``checkpoint/state.json``)
so a resumed run continues it, and it is never sent to a site. With ``m₀ = v₀ = 0``::

    fedavgm:    m ← β·m + Δ                         w ← w + η·m
    fedadam:    m ← β₁·m + (1-β₁)·Δ   v ← β₂·v + (1-β₂)·Δ²                w ← w + η·m/(√v + τ)
    fedyogi:    m as fedadam          v ← v - (1-β₂)·Δ²·sign(v - Δ²)      w ← w + η·m/(√v + τ)
    fedadagrad: m as fedadam          v ← v + Δ²                           w ← w + η·m/(√v + τ)

(no bias correction, as in the paper's Algorithm 2; Flower's FedAdam additionally rescales
``η`` by ``√(1-β₂^(t+1))/(1-β₁^(t+1))``). Integer arrays (counters) take the average.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ADAPTIVE_RULES = ("adam", "yogi", "adagrad")


@dataclass(frozen=True)
class OptState:
    """Server optimiser state: ``t`` steps taken, first moments ``m`` and second moments
    ``v`` (float64, one per model array; None before the first step / when unused)."""

    t: int = 0
    m: tuple[np.ndarray, ...] | None = None
    v: tuple[np.ndarray, ...] | None = None


def _f64(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def _check(weights: Sequence[np.ndarray], delta: Sequence[np.ndarray], state: OptState) -> None:
    if len(weights) != len(delta):
        raise ValueError(f"{len(delta)} delta arrays for {len(weights)} weight arrays")
    for i, (w, d) in enumerate(zip(weights, delta, strict=True)):
        if np.shape(w) != np.shape(d):
            raise ValueError(f"array {i}: delta shape {np.shape(d)} != weights {np.shape(w)}")
    for name, moments in (("m", state.m), ("v", state.v)):
        if moments is not None and [np.shape(a) for a in moments] != [np.shape(w) for w in weights]:
            raise ValueError(f"optimiser state {name} does not match the model's arrays")


def _apply(
    weights: Sequence[np.ndarray], steps: Sequence[np.ndarray], averaged: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``w + step`` cast to each array's dtype; integer arrays take ``averaged``."""
    out = []
    for w, s, a in zip(weights, steps, averaged, strict=True):
        w = np.asarray(w)
        if np.issubdtype(w.dtype, np.integer):
            out.append(np.asarray(a).astype(w.dtype))
        else:
            out.append((w.astype(np.float64) + s).astype(w.dtype))
    return out


def fedavgm_step(
    weights: Sequence[np.ndarray],
    delta: Sequence[np.ndarray],
    state: OptState,
    *,
    server_lr: float,
    momentum: float,
) -> tuple[list[np.ndarray], OptState]:
    """FedAvgM: ``m ← momentum·m + Δ``, ``w ← w + server_lr·m`` (``m₀ = 0``, so the first
    step is ``server_lr·Δ``; momentum 0 and lr 1 is FedAvg)."""
    _check(weights, delta, state)
    d = _f64(delta)
    m = d if state.m is None else [momentum * mi + di for mi, di in zip(state.m, d, strict=True)]
    averaged = [np.asarray(w, np.float64) + di for w, di in zip(weights, d, strict=True)]
    new = _apply(weights, [server_lr * mi for mi in m], averaged)
    return new, OptState(t=state.t + 1, m=tuple(m), v=None)


def _second_moment(rule: str, v: np.ndarray, d2: np.ndarray, beta2: float) -> np.ndarray:
    if rule == "adam":
        return beta2 * v + (1.0 - beta2) * d2
    if rule == "yogi":
        return v - (1.0 - beta2) * d2 * np.sign(v - d2)
    if rule == "adagrad":
        return v + d2
    raise ValueError(f"unknown adaptive rule {rule!r}; valid: {', '.join(ADAPTIVE_RULES)}")


def adaptive_step(
    weights: Sequence[np.ndarray],
    delta: Sequence[np.ndarray],
    state: OptState,
    *,
    rule: str,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[list[np.ndarray], OptState]:
    """FedAdam / FedYogi / FedAdagrad (``rule`` = adam | yogi | adagrad), see the module
    docstring; ``m₀ = v₀ = 0``."""
    _check(weights, delta, state)
    d = _f64(delta)
    m_prev = state.m or tuple(np.zeros_like(x) for x in d)
    v_prev = state.v or tuple(np.zeros_like(x) for x in d)
    m = [beta1 * mi + (1.0 - beta1) * di for mi, di in zip(m_prev, d, strict=True)]
    v = [_second_moment(rule, vi, di * di, beta2) for vi, di in zip(v_prev, d, strict=True)]
    steps = [server_lr * mi / (np.sqrt(vi) + tau) for mi, vi in zip(m, v, strict=True)]
    averaged = [np.asarray(w, np.float64) + di for w, di in zip(weights, d, strict=True)]
    return _apply(weights, steps, averaged), OptState(t=state.t + 1, m=tuple(m), v=tuple(v))


@dataclass(frozen=True)
class ServerOptimizer:
    """A registered server optimiser (:mod:`pathfl.fl.aggregate`): called like every
    aggregator, it returns the sites' weighted average; :meth:`step` then moves the global
    model from ``current`` towards it."""

    rule: str  # "avgm" or one of ADAPTIVE_RULES
    server_lr: float
    momentum: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    tau: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.server_lr) and self.server_lr > 0):
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")
        for name in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"server_{name} must be in [0, 1), got {getattr(self, name)}")
        if self.rule != "avgm" and not self.tau > 0:
            raise ValueError(f"server_tau must be > 0, got {self.tau}")
        if self.rule not in ("avgm", *ADAPTIVE_RULES):
            raise ValueError(f"unknown server optimiser rule {self.rule!r}")

    def __call__(
        self, updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
    ) -> list[np.ndarray]:
        from pathfl.fl.aggregate import weighted_average

        return weighted_average(updates, weights)

    def step(
        self, current: Sequence[np.ndarray], averaged: Sequence[np.ndarray], state: OptState
    ) -> tuple[list[np.ndarray], OptState]:
        delta = [
            np.asarray(a, np.float64) - np.asarray(c, np.float64)
            for a, c in zip(averaged, current, strict=True)
        ]
        if self.rule == "avgm":
            return fedavgm_step(
                current, delta, state, server_lr=self.server_lr, momentum=self.momentum
            )
        return adaptive_step(
            current,
            delta,
            state,
            rule=self.rule,
            server_lr=self.server_lr,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )


def server_update(
    aggregator: Any,
    current: Sequence[np.ndarray],
    updates: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    state: OptState,
) -> tuple[list[np.ndarray], OptState]:
    """The new global model of a round: the aggregate of ``updates``, followed by the
    optimiser step when ``aggregator`` is a :class:`ServerOptimizer` (state unchanged else)."""
    averaged = aggregator(updates, weights)
    if isinstance(aggregator, ServerOptimizer):
        return aggregator.step(current, averaged, state)
    return averaged, state


# --------------------------------------------------------------------------- checkpoint


def state_path(root: Path, round_no: int) -> Path:
    return Path(root) / "rounds" / f"server_opt_{round_no:03d}.npz"


def save_state(root: Path, round_no: int, state: OptState) -> dict[str, Any]:
    """Write the state after ``round_no`` (atomically; call before the checkpoint's
    state.json that names it). Returns the checkpoint entry (empty: nothing to save)."""
    from pathfl.io import atomic_path

    if state.m is None and state.v is None:
        return {}
    path = state_path(root, round_no)
    arrays: dict[str, np.ndarray] = {}
    for name, moments in (("m", state.m), ("v", state.v)):
        for i, a in enumerate(moments or ()):
            arrays[f"{name}{i:04d}"] = a
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return {"server_opt": {"t": state.t, "arrays": str(path.relative_to(root))}}


def load_state(root: Path, checkpoint: dict[str, Any]) -> OptState:
    """The optimiser state a checkpoint names (a fresh state when it names none)."""
    entry = checkpoint.get("server_opt")
    if not entry:
        return OptState()
    with np.load(Path(root) / entry["arrays"], allow_pickle=False) as z:
        m = tuple(z[k] for k in sorted(k for k in z.files if k.startswith("m")))
        v = tuple(z[k] for k in sorted(k for k in z.files if k.startswith("v")))
    logger.info("server optimiser state restored after %d step(s)", int(entry["t"]))
    return OptState(t=int(entry["t"]), m=m or None, v=v or None)
