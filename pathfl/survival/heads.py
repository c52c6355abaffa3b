"""Survival heads (registry ``HEADS``, ``create_head`` / ``list_heads``): everything that
depends on the survival loss in one place — how many outputs the model has, the loss, the
scalar risk, whether time bins are needed, how mini-batches are formed, and how survival
functions are obtained. Adding a loss means registering one head here (and its loss in
:mod:`pathfl.survival.losses`); no other module tests the loss name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pathfl.registry import Registry
from pathfl.survival import losses


@dataclass(frozen=True)
class SurvivalHead:
    """One survival loss and its conventions.

    ``needs_time_bins``: the model outputs one hazard logit per time bin (cut points fixed
    before training). ``min_batch``: smallest useful mini-batch (Cox: a risk set needs two
    bags). ``spread_events``: batches get the events spread evenly (a Cox batch without an
    event has no gradient). ``survival``: ``"bins"`` (from the per-bin hazards) or
    ``"breslow"`` (needs a baseline hazard fitted on training data). ``per_patient``: the loss
    is a sum of per-patient terms, so clipping each patient's gradient bounds what one patient
    changes (DP-SGD); the Cox partial likelihood couples patients through the risk set.
    ``risk_ridge``: the head takes the ridge on its risk scale (:meth:`ridge`)."""

    name: str
    needs_time_bins: bool
    min_batch: int
    spread_events: bool
    survival: str
    per_patient: bool
    risk_fn: Callable[[torch.Tensor], torch.Tensor]
    risk_ridge: bool = False

    def n_outputs(self, n_bins: int) -> int:
        return int(n_bins) if self.needs_time_bins else 1

    def loss(
        self,
        logits: torch.Tensor,
        event: torch.Tensor,
        time: torch.Tensor,
        *,
        time_bins: np.ndarray | None,
        alpha: float = 0.0,
    ) -> torch.Tensor:
        bins = np.asarray(time_bins if time_bins is not None else [], dtype=float)
        return losses.LOSSES.get(self.name)(logits, event, time, time_bins=bins, alpha=alpha)

    def ridge(self, logits: torch.Tensor, event: torch.Tensor, strength: float) -> torch.Tensor:
        """Training penalty ``½ · strength · Σ_b (r_b − r̄)² / events`` over a batch's log-risks
        ``r`` (zero for a head without ``risk_ridge``). On the loss's scale (mean over events),
        so for a linear model on standardised, uncorrelated bag means it is linear-cox's
        ridge ``½ α n ‖β‖²`` with ``α = strength`` per patient."""
        if not self.risk_ridge or strength <= 0 or logits.shape[0] < 2:
            return logits.sum() * 0.0
        r = self.risk(logits)
        return 0.5 * strength * ((r - r.mean()) ** 2).sum() / event.sum().clamp(min=1)

    def risk(self, logits: torch.Tensor) -> torch.Tensor:
        """Scalar risk per bag (higher = worse)."""
        return self.risk_fn(logits)

    def batches(self, events: np.ndarray, size: int, rng: np.random.Generator) -> list[list[int]]:
        """Shuffled mini-batches of indices into ``events``. With ``spread_events`` the events
        are dealt round-robin over the batches; no batch is smaller than ``min_batch`` (a
        short last batch joins the previous one)."""
        n = len(events)
        order = rng.permutation(n)
        n_b = max(1, math.ceil(n / max(size, 1)))
        if self.spread_events:
            ev = np.asarray(events)[order]
            order = np.concatenate([order[ev == 1], order[ev == 0]])
            out = [order[i::n_b].tolist() for i in range(n_b)]
            rng.shuffle(out)
        else:
            out = [order[i : i + size].tolist() for i in range(0, n, size)]
        out = [b for b in out if b]
        if len(out) > 1 and len(out[-1]) < self.min_batch:
            out[-2].extend(out.pop())
        return out


HEADS: Registry[SurvivalHead] = Registry("survival head")
HEADS.register("nll", paper="Zadeh & Schmid 2020")(
    lambda: SurvivalHead("nll", needs_time_bins=True, min_batch=1, spread_events=False,
                         survival="bins", per_patient=True, risk_fn=losses.nll_risk)
)  # fmt: skip
HEADS.register("cox", paper="Cox 1972; Breslow ties")(
    lambda: SurvivalHead("cox", needs_time_bins=False, min_batch=2, spread_events=True,
                         survival="breslow", per_patient=False,
                         risk_fn=losses.cox_risk, risk_ridge=True)
)  # fmt: skip


def create_head(name: str) -> SurvivalHead:
    """The head registered as ``name`` (an unknown name lists the valid ones)."""
    return HEADS.create(name)


def list_heads() -> list[str]:
    return HEADS.list()
