"""Training and evaluation steps as plain functions of (model, bags, config) — used unchanged
by ``pathfl train`` (cross-validation) and by the federated clients (FedProx via
``proximal_mu`` / ``global_params``)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pathfl.survival.data import PatientBag, targets
from pathfl.survival.losses import (
    LOSSES,
    breslow_baseline,
    cox_survival,
    discrete_survival_at,
    hazards_to_survival,
    n_outputs,
    risk_from_logits,
)
from pathfl.survival.metrics import c_index_from_counts, concordance_counts
from pathfl.survival.models import MODELS

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a survival MIL run (stored in the run's config.json)."""

    model: str = "abmil"
    loss: str = "nll"
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    dropout: float = 0.25
    max_tiles: int = 2048  # training-time subsampling; evaluation uses every tile
    bags_per_batch: int = 16
    n_bins: int = 4
    alpha: float = 0.0
    seed: int = 0
    hidden_dim: int = 256
    attn_dim: int = 128
    chowder_k: int = 5
    transmil_heads: int = 4
    transmil_landmarks: int = 64
    grad_clip: float = 5.0
    early_stopping_patience: int = 0  # 0 = off; else epochs without val-loss improvement
    val_fraction: float = 0.2  # inner validation split used when early stopping is on
    folds: int = 5
    covariates: list[str] = field(default_factory=list)
    n_boot: int = 200

    def __post_init__(self) -> None:
        MODELS.get(self.model)
        LOSSES.get(self.loss)
        if self.loss == "nll" and self.n_bins < 2:
            raise ValueError("n_bins must be >= 2 for the nll loss")
        if self.loss == "cox" and self.bags_per_batch < 2:
            raise ValueError("the cox loss needs bags_per_batch >= 2 (one bag has no risk set)")
        if self.epochs < 0 or self.max_tiles < 1 or self.bags_per_batch < 1:
            raise ValueError("epochs >= 0, max_tiles >= 1 and bags_per_batch >= 1 are required")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig option(s) {unknown}; valid: {sorted(names)}")
        return cls(**dict(d))


@dataclass
class Predictions:
    """Model outputs for a list of bags. ``survival`` (n, T) at ``times`` when available
    (NLL: per-bin survival at the bin edges; Cox: needs a Breslow baseline)."""

    patient_ids: list[str]
    risk: np.ndarray
    logits: np.ndarray
    event: np.ndarray
    time: np.ndarray
    survival: np.ndarray | None = None
    times: np.ndarray | None = None
    surv_fn: Callable[[np.ndarray], np.ndarray] | None = None


def fit_time_bins(times: Any, events: Any, *, n_bins: int) -> np.ndarray:
    """Inner cut points (``n_bins - 1`` values) at quantiles of the uncensored ``times``."""
    times, events = np.asarray(times, float), np.asarray(events).astype(bool)
    t = times[events] if events.sum() >= n_bins else times
    if events.sum() < n_bins:
        logger.warning("only %d events: time bins from all follow-up times", int(events.sum()))
    cuts = np.quantile(t, np.linspace(0, 1, n_bins + 1)[1:-1])
    if len(np.unique(cuts)) < len(cuts):
        logger.warning("tied quantiles give duplicate time-bin cut points %s", cuts)
    return cuts.astype(float)


def build_model(config: TrainConfig, *, feature_dim: int, n_covariates: int = 0) -> nn.Module:
    """Instantiate ``config.model`` for ``feature_dim``-d tiles (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    kw: dict[str, Any] = {
        "feature_dim": feature_dim,
        "n_out": n_outputs(config.loss, config.n_bins),
        "n_covariates": n_covariates,
        "hidden_dim": config.hidden_dim,
        "dropout": config.dropout,
    }
    if config.model == "abmil":
        kw["attn_dim"] = config.attn_dim
    elif config.model == "chowder":
        kw["k"] = config.chowder_k
    elif config.model == "transmil":
        kw.update(heads=config.transmil_heads, n_landmarks=config.transmil_landmarks)
    return MODELS.create(config.model, **kw)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _forward_bag(
    model: nn.Module, bag: PatientBag, rng: np.random.Generator | None, max_tiles: int | None
) -> torch.Tensor:
    feats = bag.features
    if rng is not None and max_tiles is not None and feats.shape[0] > max_tiles:
        feats = feats[np.sort(rng.choice(feats.shape[0], size=max_tiles, replace=False))]
    cov = None if bag.covariates is None else _as_tensor(bag.covariates)
    return model(_as_tensor(feats), cov).logits


def _loss(config: TrainConfig, logits: torch.Tensor, bags: Sequence[PatientBag], time_bins: Any):
    ev, t = targets(bags)
    return LOSSES.get(config.loss)(
        logits,
        torch.from_numpy(ev),
        torch.from_numpy(t),
        time_bins=np.asarray(time_bins if time_bins is not None else []),
        alpha=config.alpha,
    )


def _batches(
    bags: Sequence[PatientBag], config: TrainConfig, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffled mini-batches; for Cox each batch gets events spread evenly (a batch without an
    event has no gradient) and a final batch of one bag is merged into the previous one."""
    order = rng.permutation(len(bags))
    size = config.bags_per_batch
    if config.loss == "cox":
        ev = np.array([bags[i].event for i in order])
        order = np.concatenate([order[ev == 1], order[ev == 0]])
        n_b = max(1, math.ceil(len(order) / size))
        batches = [order[i::n_b].tolist() for i in range(n_b)]  # round-robin: events spread
        batches = [b for b in batches if b]
        rng.shuffle(batches)
        return batches
    return [order[i : i + size].tolist() for i in range(0, len(order), size)]


def train_local(
    model: nn.Module,
    bags: Sequence[PatientBag],
    config: TrainConfig,
    *,
    epochs: int,
    time_bins: Any,
    proximal_mu: float = 0.0,
    global_params: Sequence[torch.Tensor] | None = None,
    seed: int | None = None,
    val_bags: Sequence[PatientBag] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` on ``bags`` (AdamW, gradient clipping, tile
    subsampling to ``config.max_tiles``). FedProx: with ``proximal_mu > 0`` the loss gets
    ``mu/2 · ||w - w_global||²`` (``global_params`` in ``model.parameters()`` order, default:
    the weights at entry). With ``val_bags`` and ``config.early_stopping_patience > 0``, stops
    when the validation loss has not improved for that many epochs and restores the best
    weights. Returns ``loss`` (mean of the last epoch), ``n_samples``, ``epochs_run``,
    ``best_epoch`` (and ``val_loss``)."""
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor: list[torch.Tensor] = []
    if proximal_mu > 0:
        src = global_params if global_params is not None else [p.detach() for p in params]
        anchor = [torch.as_tensor(g).detach().clone().float() for g in src]
        if len(anchor) != len(params):
            raise ValueError(f"global_params has {len(anchor)} tensors, model {len(params)}")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    patience = config.early_stopping_patience if val_bags else 0
    best = (math.inf, -1, None)
    stats: dict[str, float] = {"loss": float("nan"), "n_samples": float(len(bags))}
    epoch = -1
    for epoch in range(epochs):
        model.train()
        losses, weights = [], []
        for batch in _batches(bags, config, rng):
            bb = [bags[i] for i in batch]
            logits = torch.stack([_forward_bag(model, b, rng, config.max_tiles) for b in bb])
            loss = _loss(config, logits, bb, time_bins)
            total = loss
            if proximal_mu > 0:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                total = loss + 0.5 * proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            weights.append(len(bb))
        stats["loss"] = float(np.average(losses, weights=weights)) if losses else float("nan")
        if patience:
            vl = evaluate_loss(model, val_bags, config, time_bins=time_bins)  # type: ignore[arg-type]
            stats["val_loss"] = vl
            if vl < best[0] - 1e-6:
                best = (vl, epoch, copy.deepcopy(model.state_dict()))
            elif epoch - best[1] >= patience:
                logger.info("early stop at epoch %d (best %d)", epoch + 1, best[1] + 1)
                break
        if progress is not None:
            progress(epoch, dict(stats))
    if patience and best[2] is not None:
        model.load_state_dict(best[2])
        stats["val_loss"] = best[0]
    stats["epochs_run"] = float(epoch + 1)
    stats["best_epoch"] = float((best[1] if patience else epoch) + 1)
    return stats


@torch.no_grad()
def _all_logits(model: nn.Module, bags: Sequence[PatientBag]) -> torch.Tensor:
    model.eval()
    return torch.stack([_forward_bag(model, b, None, None) for b in bags])


def evaluate_loss(
    model: nn.Module, bags: Sequence[PatientBag], config: TrainConfig, *, time_bins: Any
) -> float:
    """Loss of ``bags`` as one batch, every tile used (no dropout)."""
    return float(_loss(config, _all_logits(model, bags), bags, time_bins))


def predict(
    model: nn.Module,
    bags: Sequence[PatientBag],
    config: TrainConfig,
    *,
    time_bins: Any,
    baseline: tuple[np.ndarray, np.ndarray] | None = None,
) -> Predictions:
    """Risk (higher = worse) and, where defined, survival functions for ``bags``, using every
    tile. Cox models need ``baseline`` (see :func:`fit_baseline`) for survival functions."""
    logits = _all_logits(model, bags)
    risk = risk_from_logits(logits, config.loss).numpy().astype(float)
    ev, t = targets(bags)
    pred = Predictions([b.patient_id for b in bags], risk, logits.numpy(), ev, t)
    if config.loss == "nll":
        cuts = np.asarray(time_bins, float)
        s_bins = hazards_to_survival(logits).numpy().astype(float)
        pred.survival, pred.times = s_bins, cuts
        pred.surv_fn = lambda times: discrete_survival_at(s_bins, cuts, times)
    elif baseline is not None:
        pred.times = np.asarray(baseline[0], float)
        pred.survival = cox_survival(risk, baseline, pred.times)
        pred.surv_fn = lambda times: cox_survival(risk, baseline, times)
    return pred


def fit_baseline(
    model: nn.Module, bags: Sequence[PatientBag], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Breslow baseline cumulative hazard from the training bags (Cox only, else None)."""
    if config.loss != "cox":
        return None
    p = predict(model, bags, config, time_bins=None)
    return breslow_baseline(p.risk, p.event, p.time)


def evaluate(
    model: nn.Module, bags: Sequence[PatientBag], config: TrainConfig, *, time_bins: Any
) -> dict[str, float]:
    """Harrell C-index with its pair counts (summable across sites) and the loss."""
    p = predict(model, bags, config, time_bins=time_bins)
    conc, comp, tied = concordance_counts(p.event, p.time, p.risk)
    loss = float(_loss(config, torch.from_numpy(p.logits), bags, time_bins))
    return {
        "c_index": c_index_from_counts(conc, comp, tied),
        "n_concordant": float(conc),
        "n_comparable": float(comp),
        "n_tied_risk": float(tied),
        "loss": loss,
        "n_samples": float(len(bags)),
        "n_events": float(p.event.sum()),
    }
