"""Survival losses (registry ``LOSSES``) over a mini-batch of bags, plus the matching
risk / survival-function transforms.

* ``nll`` — discrete-time negative log-likelihood (Zadeh & Schmid 2020). ``logits (B, T)`` are
  per-bin hazard logits, ``h_j = sigmoid(logit_j)``, ``S_j = Π_{k≤j}(1 - h_k)``. For a patient
  whose time falls in bin ``y``: event → ``-log S_{y-1} - log h_y``; censored →
  ``-log S_y`` (censoring taken at the end of the bin). Loss = ``(1-α)·mean(all) +
  α·mean(event terms)`` where "mean" divides by the batch size. Risk = ``-Σ_j S_j``.
* ``cox`` — negative Cox partial log-likelihood, Breslow handling of tied times (every
  subject with ``t_j ≥ t_i`` is in the risk set of an event at ``t_i``), averaged over the
  events of the batch. ``logits (B, 1)`` are log-risks. A batch without events gives 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pathfl.registry import Registry

LossFn = Callable[..., torch.Tensor]
LOSSES: Registry[torch.Tensor] = Registry("loss")


def time_to_bin(time: np.ndarray | torch.Tensor, cuts: np.ndarray) -> np.ndarray:
    """Bin index of each time: bin 0 = (-inf, c_0], bin j = (c_{j-1}, c_j], last = (c_last, inf)."""
    return np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(time, dtype=float), "left")


@LOSSES.register("nll", n_out="n_bins")
def nll_loss(
    logits: torch.Tensor,
    event: torch.Tensor,
    time: torch.Tensor,
    *,
    time_bins: np.ndarray,
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Discrete-time survival NLL (see module docstring). ``time_bins``: the inner cut points
    (``n_bins - 1`` values)."""
    if logits.ndim != 2 or logits.shape[1] != len(time_bins) + 1:
        raise ValueError(f"nll expects logits (B, {len(time_bins) + 1}), got {tuple(logits.shape)}")
    y = torch.as_tensor(time_to_bin(time.detach().cpu().numpy(), time_bins), device=logits.device)
    y = y.long().view(-1, 1)
    ev = event.to(logits.dtype).view(-1, 1)
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # S_{-1} = 1
    s_before = torch.gather(surv_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(hazards, 1, y).clamp(min=eps)
    s_this = torch.gather(surv_pad, 1, y + 1).clamp(min=eps)
    uncensored = -ev * (torch.log(s_before) + torch.log(h_this))
    censored = -(1 - ev) * torch.log(s_this)
    full = (uncensored + censored).mean()
    return (1 - alpha) * full + alpha * uncensored.mean()


@LOSSES.register("cox", n_out=1)
def cox_loss(
    logits: torch.Tensor,
    event: torch.Tensor,
    time: torch.Tensor,
    *,
    time_bins: np.ndarray | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, mean over events."""
    eta = logits.reshape(-1)
    ev = event.to(eta.dtype).reshape(-1)
    t = time.to(eta.dtype).reshape(-1)
    if ev.sum() == 0:
        return eta.sum() * 0.0
    at_risk = (t.view(1, -1) >= t.view(-1, 1)).to(eta.dtype)  # [i, j] = t_j >= t_i
    log_risk_set = torch.logsumexp(eta.view(1, -1) + torch.log(at_risk), dim=1)
    return -((eta - log_risk_set) * ev).sum() / ev.sum()


def hazards_to_survival(logits: torch.Tensor) -> torch.Tensor:
    """Per-bin survival ``S_j`` (B, T) from hazard logits (NLL models)."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=1)


def cox_risk(logits: torch.Tensor) -> torch.Tensor:
    """Scalar risk per bag of a Cox model: its log-risk (higher = worse)."""
    return logits.reshape(logits.shape[0], -1)[:, 0]


def nll_risk(logits: torch.Tensor) -> torch.Tensor:
    """Scalar risk per bag of a discrete-time model: ``-Σ_j S_j`` (higher = worse)."""
    return -hazards_to_survival(logits).sum(dim=1)


# --- Breslow baseline for Cox survival functions ------------------------------------------------


def breslow_sums(
    risk: np.ndarray, event: np.ndarray, time: np.ndarray, starts: np.ndarray, *, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The two sums of the Breslow estimator per cell ``k = [starts[k], starts[k+1])`` (the
    last cell open to the right; patients with ``time < starts[0]`` are in no cell):
    ``d_k`` = events in the cell, ``s_k = Σ_{j: time_j ≥ starts[k]} exp(risk_j − shift)`` (the
    risk set at the cell's start). Both add up over disjoint groups of patients (sites)."""
    risk, event, time = (np.asarray(a, dtype=float) for a in (risk, event, time))
    starts = np.asarray(starts, dtype=float)
    cell = np.searchsorted(starts, time, side="right") - 1
    inside = cell >= 0
    cell, risk, event = cell[inside], risk[inside], event[inside]
    d = np.bincount(cell[event > 0], minlength=len(starts)).astype(float)
    per_cell = np.bincount(cell, weights=np.exp(risk - shift), minlength=len(starts))
    return d, np.cumsum(per_cell[::-1])[::-1]


def baseline_from_sums(
    d: np.ndarray, s: np.ndarray, starts: np.ndarray, *, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard from :func:`breslow_sums`: ``H0`` jumps by
    ``d_k / s_k`` at ``starts[k]`` for every cell with events. Returns ``(times, H0)``."""
    d, s, starts = (np.asarray(a, dtype=float) for a in (d, s, starts))
    keep = d > 0
    return starts[keep], np.cumsum(d[keep] / s[keep]) * np.exp(-shift)


def breslow_baseline(
    risk: np.ndarray, event: np.ndarray, time: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard ``H0`` at the distinct event times of the training
    data (``risk`` = log-risk): :func:`breslow_sums` with one cell per distinct event time.
    Returns ``(event_times, H0)``."""
    risk, event, time = (np.asarray(a, dtype=float) for a in (risk, event, time))
    uniq = np.unique(time[event > 0])
    shift = float(risk.max())  # for stability; undone in baseline_from_sums
    d, s = breslow_sums(risk, event, time, uniq, shift=shift)
    return baseline_from_sums(d, s, uniq, shift=shift)


def cox_survival(
    risk: np.ndarray, baseline: tuple[np.ndarray, np.ndarray], times: np.ndarray
) -> np.ndarray:
    """``S(t | x) = exp(-H0(t) · exp(risk))`` at ``times`` (n, T), H0 a right-continuous step."""
    bt, h0 = (np.asarray(a, dtype=float) for a in baseline)
    idx = np.searchsorted(bt, np.asarray(times, dtype=float), side="right") - 1
    h_at = np.where(idx >= 0, h0[np.clip(idx, 0, None)], 0.0)
    return np.exp(-np.outer(np.exp(np.asarray(risk, dtype=float)), h_at))


def discrete_survival_at(surv_bins: np.ndarray, cuts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Step survival function of NLL models at ``times``: the hazard of bin ``j`` is taken
    at the bin's upper edge ``c_j``, so ``S(t) = S_{j-1}`` for ``t`` in bin ``j`` (the last
    bin's hazard has no finite edge and is never applied)."""
    surv_pad = np.concatenate([np.ones((surv_bins.shape[0], 1)), surv_bins], axis=1)
    idx = np.searchsorted(np.asarray(cuts, dtype=float), np.asarray(times, dtype=float), "right")
    return surv_pad[:, idx]
