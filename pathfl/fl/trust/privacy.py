"""Client-side differential privacy for a site's local training: DP-SGD with one patient bag
as the privacy unit (per-bag gradient clipping + Gaussian noise, Poisson sampling of bags)
and an RDP accountant that reports (ε, δ) per round and cumulatively over the run.

Why our own DP-SGD loop rather than opacus' ``PrivacyEngine``: a MIL bag is a variable-size
set of tiles, and each *patient* (not each tile) is the record to protect. Computing the
gradient of one bag at a time ("micro-batches" of one) gives exact per-patient gradients for
every model kind (attention, top-k, Nyström transformer) without padding or per-layer
grad-sample support. The privacy accounting is our own closed form (numpy, no opacus import
in the site process): Rényi DP of the Poisson-subsampled Gaussian mechanism at integer orders
(Mironov, Talwar & Zhang 2019), summed over steps and rounds and converted to (ε, δ) with
Balle et al. 2020, Thm. 21 — the analysis opacus' ``RDPAccountant`` does (a test checks that
both give the same ε).

Only losses that are a sum of per-patient terms are allowed: ``nll`` (discrete time). The Cox
partial likelihood couples patients through the risk set, so one patient changes other
patients' gradients and per-bag clipping no longer bounds the sensitivity — refused.

What is protected: the model updates a site sends (and everything computed from them, by
post-processing) are (ε, δ)-DP with respect to adding or removing one patient of that site.
What is NOT: the metrics a site reports (loss, C-index and its pair counts, sample counts),
the federation's time-bin cut points, and the site fingerprint — these are exact.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathfl.fl.trust.accountant import PrivacyLedger, epsilon_of

logger = logging.getLogger(__name__)

DEFAULT_DELTA = 1e-5


class PrivacyError(ValueError):
    """A DP configuration that cannot give the promised guarantee."""


def _get(cfg: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    norm = {str(k).replace("-", "_"): v for k, v in cfg.items()}
    for n in names:
        if n in norm and norm[n] is not None and norm[n] != "":
            return norm[n]
    return default


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


@dataclass
class DPConfig:
    """DP-SGD settings. Either ``noise_multiplier`` (σ) is given, or ``target_epsilon``, from
    which σ is chosen so that ``planned_rounds`` rounds of ``epochs`` local epochs spend at most
    that ε at ``delta``. ``sample_rate`` (Poisson probability of a bag per step) defaults to
    ``bags_per_batch / n_bags``."""

    enabled: bool = False
    noise_multiplier: float | None = 1.0
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    target_epsilon: float | None = None
    planned_rounds: int = 1
    sample_rate: float | None = None

    def __post_init__(self) -> None:
        if self.max_grad_norm <= 0:
            raise PrivacyError(f"dp_max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise PrivacyError(f"dp_delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplier is None and self.target_epsilon is None and self.enabled:
            raise PrivacyError("give dp_noise_multiplier or dp_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise PrivacyError(f"dp_noise_multiplier must be > 0, got {self.noise_multiplier}")
        if self.sample_rate is not None and not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"dp_sample_rate must be in (0, 1], got {self.sample_rate}")

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPConfig:
        """Read ``dp`` (bool), ``dp_noise_multiplier``, ``dp_max_grad_norm``, ``dp_delta``,
        ``dp_epsilon`` (target; overrides the noise multiplier), ``dp_sample_rate`` and
        ``rounds`` from a run config (``-`` or ``_`` in keys)."""
        eps = _get(cfg, "dp_epsilon", "target_epsilon")
        sigma = _get(cfg, "dp_noise_multiplier")
        rate = _get(cfg, "dp_sample_rate")
        return cls(
            enabled=_truthy(_get(cfg, "dp", default=False)),
            noise_multiplier=None if eps is not None else float(sigma if sigma else 1.0),
            max_grad_norm=float(_get(cfg, "dp_max_grad_norm", default=1.0)),
            delta=float(_get(cfg, "dp_delta", default=DEFAULT_DELTA)),
            target_epsilon=None if eps is None else float(eps),
            planned_rounds=int(_get(cfg, "rounds", "num_rounds", default=1)),
            sample_rate=None if rate is None else float(rate),
        )


def steps_per_epoch(sample_rate: float) -> int:
    """Poisson-sampled steps that visit each bag once in expectation."""
    return max(1, math.ceil(1.0 / sample_rate))


def resolve_noise(
    dp: DPConfig, *, sample_rate: float, epochs: int = 1, steps_per_round: int | None = None
) -> float:
    """σ to use: the given one, or the smallest that keeps ``planned_rounds`` rounds of
    ``steps_per_round`` Poisson-sampled steps (default: ``epochs`` × ``steps_per_epoch``)
    within ``target_epsilon``."""
    if dp.target_epsilon is None:
        assert dp.noise_multiplier is not None
        return float(dp.noise_multiplier)
    per_round = steps_per_round
    if per_round is None:
        per_round = steps_per_epoch(sample_rate) * max(1, epochs)
    steps = max(1, per_round) * max(1, dp.planned_rounds)
    target = dp.target_epsilon

    def eps(sigma: float) -> float:
        return epsilon_of([(sigma, sample_rate, steps)], dp.delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise PrivacyError(f"no noise multiplier reaches dp_epsilon={target}")
    while hi - lo > 0.01 * hi:  # bisection to 1%: smallest sigma with eps <= target
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= target else (mid, hi)
    return float(hi)


def bag_loss(model: Any, bag: Any, config: Any, *, time_bins: Any, rng: Any = None) -> Any:
    """Loss of one patient bag (forward with tile subsampling to ``config.max_tiles`` when
    ``rng`` is given): the train stage's own bag forward and head loss."""
    from pathfl.survival.train import batch_loss, forward_bag

    logits = forward_bag(model, bag, rng, config.max_tiles).unsqueeze(0)
    return batch_loss(config, logits, [bag], time_bins)


def clipped_grad_sum(
    model: Any,
    bags: Sequence[Any],
    config: Any,
    *,
    time_bins: Any,
    max_grad_norm: float,
    rng: Any = None,
    params: Sequence[Any] | None = None,
) -> tuple[list[Any], list[float]]:
    """Σ over ``bags`` of each bag's loss gradient clipped to L2 norm ``max_grad_norm`` (the
    sensitivity of this sum to adding/removing one patient is at most ``max_grad_norm``).
    Returns the summed gradients (in ``params`` order) and the per-bag losses."""
    import torch

    params = (
        list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    )
    summed = [torch.zeros_like(p) for p in params]
    losses: list[float] = []
    for bag in bags:
        loss = bag_loss(model, bag, config, time_bins=time_bins, rng=rng)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)
        ]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        factor = min(1.0, max_grad_norm / (norm + 1e-12))
        for s, g in zip(summed, grads, strict=True):
            s.add_(g, alpha=factor)
        losses.append(float(loss.detach()))
    return summed, losses


def dp_losses() -> list[str]:
    """The survival heads whose loss is a sum over patients (:attr:`SurvivalHead.per_patient`):
    the only ones DP-SGD's per-patient clipping protects."""
    from pathfl.survival.heads import create_head, list_heads

    return [h for h in list_heads() if create_head(h).per_patient]


def dp_train_local(
    model: Any,
    bags: Sequence[Any],
    config: Any,
    dp: DPConfig,
    *,
    epochs: int,
    time_bins: Any,
    proximal_mu: float = 0.0,
    global_params: Sequence[Any] | None = None,
    seed: int | None = None,
    ledger: PrivacyLedger | None = None,
    steps: int | None = None,
    schedule_span: tuple[float, float] = (0.0, 1.0),
) -> dict[str, float]:
    """DP-SGD version of ``pathfl.survival.train.train_local`` (same arguments plus ``dp`` and
    ``ledger``): trains ``model`` in place with AdamW on noisy, per-bag-clipped gradients, for
    ``steps`` Poisson-sampled steps when given (a federated round), else ``epochs`` ×
    :func:`steps_per_epoch` steps; the learning rate follows the round's share
    ``schedule_span`` of the run's schedule. With ``dp_epsilon``, σ is chosen for
    ``planned_rounds`` rounds of this many steps (:func:`resolve_noise`).

    The FedProx term ``mu/2·||w - w_global||²`` does not touch data, so its gradient is added
    after the noise at no privacy cost. ``config.grad_clip`` is replaced by the DP clipping.
    Returns ``loss`` (mean per-bag training loss — NOT private), ``n_samples``, and
    ``dp_epsilon`` (cumulative over the ledger), ``dp_epsilon_round``, ``dp_delta``,
    ``dp_noise_multiplier``, ``dp_max_grad_norm``, ``dp_sample_rate``, ``dp_steps``. The ledger
    (if given) is extended by this round's steps."""
    import torch

    from pathfl.survival.augment import training_bags
    from pathfl.survival.train import make_optimizer, proximal_anchor, set_lr

    n = _check_dp_training(config, n_bags=len(bags), delta=dp.delta)
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)  # dropout, model-side randomness: reproducible
    rng = np.random.default_rng(seed)  # tile subsampling within a bag: reproducible
    bags = training_bags(bags, enabled=config.feature_augmentation)  # survival.augment
    # The Poisson sampling of patients and the Gaussian noise must be secret: the run seed is
    # known to the server, and noise it can regenerate (or a sample it can predict) gives no
    # privacy. Both come from the OS's randomness, so DP runs are not bit-reproducible.
    secret = np.random.default_rng(secrets.randbits(128))
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    q = dp.sample_rate or min(1.0, config.bags_per_batch / n)
    n_total = steps if steps is not None else steps_per_epoch(q) * max(0, int(epochs))
    sigma = resolve_noise(dp, sample_rate=q, steps_per_round=max(1, n_total))
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = proximal_anchor(params, global_params) if proximal_mu > 0 else []
    opt = make_optimizer(params, config)
    bins = np.asarray(time_bins if time_bins is not None else [])
    losses: list[float] = []
    model.train()
    for step in range(n_total):
        set_lr(opt, config, step=step, total=n_total, span=schedule_span)
        chosen = np.flatnonzero(secret.random(n) < q)
        summed, step_losses = clipped_grad_sum(
            model,
            [bags[i] for i in chosen],
            config,
            time_bins=bins,
            max_grad_norm=dp.max_grad_norm,
            rng=rng,
            params=params,
        )
        losses.extend(step_losses)
        for p, s in zip(params, summed, strict=True):
            noise = torch.normal(0.0, sigma * dp.max_grad_norm, size=p.shape, generator=gen)
            p.grad = (s + noise) / (q * n)  # divided by the expected batch size
        if anchor:  # FedProx: its gradient is added after the noise
            for p, a in zip(params, anchor, strict=True):
                p.grad.add_(p.detach() - a, alpha=proximal_mu)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return _round_report(dp, sigma=sigma, q=q, n_steps=n_total, n=n, losses=losses, ledger=ledger)


def _check_dp_training(config: Any, *, n_bags: int, delta: float) -> int:
    """Refuse a loss DP-SGD cannot protect, or no bags; returns the number of bags."""
    allowed = dp_losses()
    if config.loss not in allowed:
        raise PrivacyError(
            f"DP-SGD needs a loss that is a sum over patients ({', '.join(allowed)}); "
            f"{config.loss!r} couples patients (Cox risk sets) and is refused"
        )
    if n_bags == 0:
        raise PrivacyError("no training bags")
    if delta >= 1.0 / n_bags:
        logger.warning("dp_delta=%g is not below 1/n=%g: weak guarantee", delta, 1.0 / n_bags)
    return n_bags


def _round_report(
    dp: DPConfig,
    *,
    sigma: float,
    q: float,
    n_steps: int,
    n: int,
    losses: list[float],
    ledger: PrivacyLedger | None,
) -> dict[str, float]:
    """The round's metrics; ``ledger`` (if given) is charged with the round's steps."""
    round_history = [(sigma, q, n_steps)]
    if ledger is not None:
        ledger.add(sigma, q, n_steps)
        cumulative = ledger.epsilon(dp.delta)
    else:
        cumulative = epsilon_of(round_history, dp.delta)
    eps_round = epsilon_of(round_history, dp.delta)
    logger.info(
        "DP-SGD: %d steps, sigma=%.3f, C=%.3g, q=%.3f -> eps round %.3f, total %.3f (delta=%g)",
        n_steps,
        sigma,
        dp.max_grad_norm,
        q,
        eps_round,
        cumulative,
        dp.delta,
    )
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "n_samples": float(n),
        "dp_epsilon": cumulative,
        "dp_epsilon_round": eps_round,
        "dp_delta": float(dp.delta),
        "dp_noise_multiplier": float(sigma),
        "dp_max_grad_norm": float(dp.max_grad_norm),
        "dp_sample_rate": float(q),
        "dp_steps": float(n_steps),
    }
