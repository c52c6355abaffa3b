"""Client-side differential privacy for a site's local training: DP-SGD with one patient bag
as the privacy unit (per-bag gradient clipping + Gaussian noise, Poisson sampling of bags)
and an RDP accountant that reports (ε, δ) per round and cumulatively over the run.

Why our own DP-SGD loop rather than opacus' ``PrivacyEngine``: a MIL bag is a variable-size
set of tiles, and each *patient* (not each tile) is the record to protect. Computing the
gradient of one bag at a time ("micro-batches" of one) gives exact per-patient gradients for
every model kind (attention, top-k, Nyström transformer) without padding or per-layer
grad-sample support. The privacy accounting is opacus' ``RDPAccountant`` (used standalone).

Only losses that are a sum of per-patient terms are allowed: ``nll`` (discrete time). The Cox
partial likelihood couples patients through the risk set, so one patient changes other
patients' gradients and per-bag clipping no longer bounds the sensitivity — refused.

What is protected: the model updates a site sends (and everything computed from them, by
post-processing) are (ε, δ)-DP with respect to adding or removing one patient of that site.
What is NOT: the metrics a site reports (loss, C-index and its pair counts, sample counts),
the federation's time-bin cut points, and the site fingerprint — these are exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic

logger = logging.getLogger(__name__)

DP_LOSSES = ("nll",)
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


@dataclass
class PrivacyLedger:
    """The accountant's history ``[(noise_multiplier, sample_rate, steps), ...]`` of one site
    in one run, persisted between rounds (each round may run in a fresh process)."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def add(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if steps > 0:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, delta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        path = Path(path)
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls([(float(s), float(q), int(n)) for s, q, n in data.get("history", [])])

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json_atomic(path, {"history": [list(h) for h in self.history]})


#: RDP orders. Integer orders only: the subsampled-Gaussian RDP has a closed form there (the
#: bound stays valid, at most a few per cent looser than also using fractional orders).
RDP_ORDERS: tuple[int, ...] = (*range(2, 64), 80, 96, 128, 192, 256, 384, 512, 768, 1024)


def _rdp_subsampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism at integer order
    ``alpha`` (Mironov, Talwar & Zhang 2019, sec. 3.3):
    ``log A = logsumexp_k [log C(a,k) + k log q + (a-k) log(1-q) + (k²-k)/(2σ²)]``,
    RDP = ``log A / (a-1)``."""
    if q <= 0:
        return 0.0
    if q >= 1:
        return alpha / (2 * sigma**2)
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = math.lgamma(alpha + 1) - np.array(
        [math.lgamma(i + 1) + math.lgamma(alpha - i + 1) for i in range(alpha + 1)]
    )
    terms = (
        log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    )
    top = float(terms.max())
    return (top + math.log(float(np.exp(terms - top).sum()))) / (alpha - 1)


#: Run-config keys that change with every submission of the same run (Flower's run id, the
#: round, the linear-cox row standardiser recomputed at each check-in) and so must not decide
#: which ledger a round is charged to. (The scaler and steps per round are restored from the
#: checkpoint on resume, so they stay part of the key.)
_PER_SUBMISSION_KEYS = ("run_id", "round", "linear_cox_rows")


def ledger_path(state_dir: str | os.PathLike[str], cfg: Mapping[str, Any]) -> Path:
    """The site-local ledger file of a run: keyed by a hash of the run config without its
    per-submission keys, so a resumed run (a new Flower run id, same config) keeps composing
    the ε of the rounds before the crash. Two separate runs with identical configs share a
    ledger, which over-states ε (the safe side)."""
    from pathfl.io import sha256_json

    key = sha256_json({k: v for k, v in cfg.items() if k not in _PER_SUBMISSION_KEYS})
    return Path(state_dir) / f"dp_ledger_{key[:16]}.json"


def epsilon_of(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of a composition of Poisson-subsampled Gaussian mechanisms
    ``[(noise_multiplier, sample_rate, steps), ...]``: RDP summed over steps, converted with
    Balle et al. 2020, Thm. 21 (the same analysis as opacus' ``RDPAccountant``)."""
    if not history:
        return 0.0
    orders = np.array(RDP_ORDERS, dtype=np.float64)
    rdp = np.zeros_like(orders)
    for sigma, q, steps in history:
        if sigma <= 0:
            return math.inf
        rdp += steps * np.array([_rdp_subsampled_gaussian(q, sigma, int(a)) for a in orders])
    eps = rdp - (math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


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

    from pathfl.survival.train import lr_factor

    if config.loss not in DP_LOSSES:
        raise PrivacyError(
            f"DP-SGD needs a loss that is a sum over patients ({', '.join(DP_LOSSES)}); "
            f"{config.loss!r} couples patients (Cox risk sets) and is refused"
        )
    n = len(bags)
    if n == 0:
        raise PrivacyError("no training bags")
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)  # dropout, model-side randomness: reproducible
    rng = np.random.default_rng(seed)  # tile subsampling within a bag: reproducible
    # The Poisson sampling of patients and the Gaussian noise must be secret: the run seed is
    # known to the server, and noise it can regenerate (or a sample it can predict) gives no
    # privacy. Both come from the OS's randomness, so DP runs are not bit-reproducible.
    secret = np.random.default_rng(secrets.randbits(128))
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    q = dp.sample_rate or min(1.0, config.bags_per_batch / n)
    n_total = steps if steps is not None else steps_per_epoch(q) * max(0, int(epochs))
    sigma = resolve_noise(dp, sample_rate=q, steps_per_round=max(1, n_total))
    clip = dp.max_grad_norm
    if dp.delta >= 1.0 / n:
        logger.warning("dp_delta=%g is not below 1/n=%g: weak guarantee", dp.delta, 1.0 / n)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor: list[torch.Tensor] = []
    if proximal_mu > 0:
        src = global_params if global_params is not None else [p.detach() for p in params]
        anchor = [torch.as_tensor(g).detach().clone().float() for g in src]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    bins = np.asarray(time_bins if time_bins is not None else [])
    expected_batch = q * n
    n_steps, losses = 0, []
    model.train()
    p0, p1 = schedule_span
    for _ in range(n_total):
        for g in opt.param_groups:
            g["lr"] = config.lr * lr_factor(p0 + (p1 - p0) * n_steps / max(n_total, 1), config)
        chosen = np.flatnonzero(secret.random(n) < q)
        summed, step_losses = clipped_grad_sum(
            model,
            [bags[i] for i in chosen],
            config,
            time_bins=bins,
            max_grad_norm=clip,
            rng=rng,
            params=params,
        )
        losses.extend(step_losses)
        for p, s in zip(params, summed, strict=True):
            noise = torch.normal(0.0, sigma * clip, size=p.shape, generator=gen)
            p.grad = (s + noise) / expected_batch
        if proximal_mu > 0:
            for p, a in zip(params, anchor, strict=True):
                p.grad.add_(p.detach() - a, alpha=proximal_mu)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_steps += 1
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
        clip,
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
        "dp_max_grad_norm": float(clip),
        "dp_sample_rate": float(q),
        "dp_steps": float(n_steps),
    }
