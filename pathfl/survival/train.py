"""Training and evaluation steps as plain functions of (model, bags, config) — used unchanged
by ``pathfl train`` (cross-validation) and by the federated clients (FedProx via
``proximal_mu`` / ``global_params``)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pathfl.interrupts import checkpoint
from pathfl.survival.augment import sample_tiles, training_bags
from pathfl.survival.config import TrainConfig
from pathfl.survival.data import PatientBag, targets
from pathfl.survival.losses import (
    breslow_baseline,
    cox_survival,
    discrete_survival_at,
    hazards_to_survival,
)
from pathfl.survival.metrics import c_index_from_counts, concordance_counts
from pathfl.survival.models import create_model, model_options

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "build_model", "evaluate", "predict", "train_local"]


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
    options = {"hidden_dim": config.hidden_dim, "dropout": config.dropout}
    options.update({kw: getattr(config, f) for kw, f in model_options(config.model).items()})
    return create_model(
        config.model,
        feature_dim=feature_dim,
        n_out=config.head.n_outputs(config.n_bins),
        n_covariates=n_covariates,
        **options,
    )


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def forward_bag(
    model: nn.Module, bag: PatientBag, rng: np.random.Generator | None, max_tiles: int | None
) -> torch.Tensor:
    """Logits of one bag; in training (``rng`` given) at most ``max_tiles`` random tiles."""
    feats = _sample(bag, rng, max_tiles)
    cov = None if bag.covariates is None else _as_tensor(bag.covariates)
    return model(_as_tensor(feats), cov).logits


PACK_MAX_TILES = 262_144  # tiles per packed forward pass (bounds activation memory)


def _sample(bag: PatientBag, rng: np.random.Generator | None, max_tiles: int | None):
    # evaluation (no rng): every original tile; training: subsampled, augmented versions drawn
    return bag.features if rng is None else sample_tiles(bag, rng, max_tiles)


def bags_logits(
    model: nn.Module,
    bags: Sequence[PatientBag],
    rng: np.random.Generator | None = None,
    max_tiles: int | None = None,
) -> torch.Tensor:
    """Logits ``(len(bags), n_out)``. Models with ``forward_batch`` get the bags packed into
    one pass (chunks of at most :data:`PACK_MAX_TILES` tiles); others one bag at a time."""
    if not hasattr(model, "forward_batch"):
        return torch.stack([forward_bag(model, b, rng, max_tiles) for b in bags])
    out, chunk, n_tiles = [], [], 0
    for b in bags:
        f = _sample(b, rng, max_tiles)
        if chunk and n_tiles + len(f) > PACK_MAX_TILES:
            out.append(_packed(model, chunk))
            chunk, n_tiles = [], 0
        chunk.append((f, b.covariates))
        n_tiles += len(f)
    if chunk:
        out.append(_packed(model, chunk))
    return torch.cat(out)


def _packed(model: nn.Module, chunk: list[tuple[np.ndarray, np.ndarray | None]]) -> torch.Tensor:
    x = _as_tensor(np.concatenate([f for f, _ in chunk]))
    seg = torch.from_numpy(np.repeat(np.arange(len(chunk)), [len(f) for f, _ in chunk]))
    cov = None
    if chunk[0][1] is not None:
        cov = _as_tensor(np.stack([c for _, c in chunk]))  # type: ignore[misc]
    return model.forward_batch(x, seg, len(chunk), cov)  # type: ignore[operator]


def batch_loss(
    config: TrainConfig, logits: torch.Tensor, bags: Sequence[PatientBag], time_bins: Any
) -> torch.Tensor:
    """The head's loss of a batch of bags (``logits`` stacked in ``bags`` order)."""
    ev, t = targets(bags)
    return config.head.loss(
        logits, torch.from_numpy(ev), torch.from_numpy(t), time_bins=time_bins, alpha=config.alpha
    )


def make_batches(
    bags: Sequence[PatientBag], config: TrainConfig, rng: np.random.Generator
) -> list[list[int]]:
    """One pass of shuffled mini-batches (the head's batching rule)."""
    return config.head.batches(np.array([b.event for b in bags]), config.bags_per_batch, rng)


def steps_per_pass(n_bags: int, config: TrainConfig) -> int:
    """Optimizer steps in one pass over ``n_bags`` bags (the head's batching rule)."""
    if n_bags <= 0:
        return 0
    ev = np.zeros(n_bags, dtype=np.int64)
    return len(config.head.batches(ev, config.bags_per_batch, np.random.default_rng(0)))


def passes_per_budget(n_bags: int, config: TrainConfig, *, epochs: int | None = None) -> int:
    """Passes over ``n_bags`` bags: ``epochs`` (default ``config.epochs``), raised so that at
    least ``config.min_steps`` optimizer steps are taken (0 epochs = no training)."""
    epochs = config.epochs if epochs is None else int(epochs)
    per_pass = steps_per_pass(n_bags, config)
    if epochs <= 0 or per_pass == 0:
        return 0
    return max(epochs, math.ceil(config.min_steps / per_pass))


def total_steps(n_bags: int, config: TrainConfig, *, epochs: int | None = None) -> int:
    """The optimisation budget in steps for ``n_bags`` training bags."""
    return passes_per_budget(n_bags, config, epochs=epochs) * steps_per_pass(n_bags, config)


def lr_factor(progress: float, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``progress`` ∈ [0, 1] of the whole budget."""
    return SCHEDULES[config.lr_schedule](float(progress), config)


def _cosine(p: float, c: TrainConfig) -> float:
    w = c.warmup_fraction
    if p < w:
        return max(p / w, 1e-3)
    q = min(1.0, (p - w) / max(1e-12, 1.0 - w))
    return c.min_lr_fraction + (1 - c.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * q))


SCHEDULES: dict[str, Callable[[float, TrainConfig], float]] = {  # keys: SCHEDULE_NAMES
    "cosine": _cosine,
    "constant": lambda p, c: 1.0,
}


def proximal_anchor(
    params: Sequence[torch.Tensor], global_params: Sequence[Any] | None
) -> list[torch.Tensor]:
    """FedProx's ``w_global`` as float tensors in ``params`` order (default: ``params`` now)."""
    src = global_params if global_params is not None else [p.detach() for p in params]
    anchor = [torch.as_tensor(g).detach().clone().float() for g in src]
    if len(anchor) != len(params):
        raise ValueError(f"global_params has {len(anchor)} tensors, model {len(params)}")
    return anchor


def make_optimizer(params: Sequence[torch.Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """The local optimizer (AdamW at ``config.lr``, ``config.weight_decay``)."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def set_lr(
    opt: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    step: int,
    total: int,
    span: tuple[float, float] = (0.0, 1.0),
) -> None:
    """The learning rate of ``step`` of ``total``, steps covering the share ``span`` of the
    whole schedule (:func:`lr_factor`)."""
    p0, p1 = span
    for g in opt.param_groups:
        g["lr"] = config.lr * lr_factor(p0 + (p1 - p0) * step / max(total, 1), config)


def _prox_term(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))  # type: ignore[return-value]


def _train_pass(
    model: nn.Module,
    bags: Sequence[PatientBag],
    config: TrainConfig,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    *,
    time_bins: Any,
    step: int,
    total: int,
    span: tuple[float, float],
    prox: tuple[float, list[torch.Tensor]],
) -> tuple[int, float]:
    """One pass over ``bags`` in batches, stopping at ``total`` steps. Returns the step count
    after the pass and the pass's mean loss (weighted by batch size; NaN if no step ran)."""
    mu, anchor = prox
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()
    losses, weights = [], []
    for batch in make_batches(bags, config, rng):
        if step >= total:
            break
        set_lr(opt, config, step=step, total=total, span=span)
        bb = [bags[i] for i in batch]
        logits = bags_logits(model, bb, rng, config.max_tiles)
        loss = batch_loss(config, logits, bb, time_bins)
        ev = torch.from_numpy(targets(bb)[0])
        total_loss = loss + config.head.ridge(logits, ev, config.risk_ridge)
        if anchor:
            total_loss = total_loss + 0.5 * mu * _prox_term(params, anchor)
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        weights.append(len(bb))
    return step, float(np.average(losses, weights=weights)) if losses else float("nan")


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
    schedule_span: tuple[float, float] = (0.0, 1.0),
    steps: int | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``bags`` (AdamW, warm-up + cosine learning rate, gradient
    clipping, tile subsampling to ``config.max_tiles``) for ``epochs`` passes (raised to
    reach ``config.min_steps``, see :func:`passes_per_budget`), or exactly ``steps``
    optimizer steps when given (federated rounds). The schedule covers the
    fraction ``schedule_span`` of the whole budget (a federated round passes its share).
    FedProx: with ``proximal_mu > 0`` the loss gets ``mu/2 · ||w - w_global||²``
    (``global_params`` in ``model.parameters()`` order, default: the weights at entry). With
    ``val_bags`` and ``config.early_stopping_patience > 0``, stops when the validation loss
    has not improved for that many passes and restores the best weights. Returns ``loss``
    (mean of the last pass), ``n_samples``, ``steps``, ``epochs_run``, ``best_epoch`` (and
    ``val_loss``)."""
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bags = training_bags(bags, enabled=config.feature_augmentation)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = proximal_anchor(params, global_params) if proximal_mu > 0 else []
    opt = make_optimizer(params, config)
    patience = config.early_stopping_patience if val_bags else 0
    passes = 10**9 if steps is not None else passes_per_budget(len(bags), config, epochs=epochs)
    total = steps if steps is not None else passes * steps_per_pass(len(bags), config)
    best: tuple[float, int, Any] = (math.inf, -1, None)
    stats: dict[str, float] = {"loss": float("nan"), "n_samples": float(len(bags))}
    step, epoch = 0, -1
    for epoch in range(passes):
        checkpoint()
        if step >= total:
            epoch -= 1
            break
        step, stats["loss"] = _train_pass(
            model,
            bags,
            config,
            opt,
            rng,
            time_bins=time_bins,
            step=step,
            total=total,
            span=schedule_span,
            prox=(proximal_mu, anchor),
        )
        if patience:
            vl = evaluate_loss(model, val_bags, config, time_bins=time_bins)  # type: ignore[arg-type]
            stats["val_loss"] = vl
            if vl < best[0] - 1e-6:
                best = (vl, epoch, copy.deepcopy(model.state_dict()))
            elif epoch - best[1] >= patience:
                logger.info("early stop at pass %d (best %d)", epoch + 1, best[1] + 1)
                break
        if progress is not None:
            progress(epoch, dict(stats))
    if patience and best[2] is not None:
        model.load_state_dict(best[2])
        stats["val_loss"] = best[0]
    stats["steps"] = float(step)
    stats["epochs_run"] = float(epoch + 1)
    stats["best_epoch"] = float((best[1] if patience else epoch) + 1)
    return stats


@torch.no_grad()
def _all_logits(model: nn.Module, bags: Sequence[PatientBag]) -> torch.Tensor:
    model.eval()
    return bags_logits(model, bags)


def evaluate_loss(
    model: nn.Module, bags: Sequence[PatientBag], config: TrainConfig, *, time_bins: Any
) -> float:
    """Loss of ``bags`` as one batch, every tile used (no dropout)."""
    return float(batch_loss(config, _all_logits(model, bags), bags, time_bins))


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
    risk = config.head.risk(logits).numpy().astype(float)
    ev, t = targets(bags)
    pred = Predictions([b.patient_id for b in bags], risk, logits.numpy(), ev, t)
    if config.head.survival == "bins":
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
    if config.head.survival != "breslow":
        return None
    p = predict(model, bags, config, time_bins=None)
    return breslow_baseline(p.risk, p.event, p.time)


def evaluate(
    model: nn.Module, bags: Sequence[PatientBag], config: TrainConfig, *, time_bins: Any
) -> dict[str, float]:
    """Harrell C-index with its pair counts (summable across sites) and the loss."""
    p = predict(model, bags, config, time_bins=time_bins)
    conc, comp, tied = concordance_counts(p.event, p.time, p.risk)
    loss = float(batch_loss(config, torch.from_numpy(p.logits), bags, time_bins))
    return {
        "c_index": c_index_from_counts(conc, comp, tied),
        "n_concordant": float(conc),
        "n_comparable": float(comp),
        "n_tied_risk": float(tied),
        "loss": loss,
        "n_samples": float(len(bags)),
        "n_events": float(p.event.sum()),
    }
