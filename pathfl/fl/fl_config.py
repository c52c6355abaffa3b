"""The federated run configuration: one flat mapping (YAML for ``pathfl fl run|simulate
--config``) holding the federation keys below plus any :class:`pathfl.survival.train.TrainConfig`
key (model, loss, lr, n_bins, ...). The server sends the *effective* configuration to every
site with each request; ``user_keys`` lists the keys the researcher set explicitly (what a
site policy's ``allowed_config_keys`` is checked against, together with model, loss, rounds,
local_epochs, local_steps and the steps per round the server fixed, which are always checked).

Optimisation budget: by default (``local_steps: 0``, ``local_epochs: 0``) the server fixes at
check-in ``steps_per_round = ceil(S / rounds)`` with ``S`` = the step budget ``pathfl train``
gives a pooled cohort of all sites' training patients (:func:`pathfl.fl.fed_stats.steps_per_round`),
so the federated model gets the same number of optimizer steps as the pooled one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pathfl.config import ConfigError, check_keys, normalize_keys
from pathfl.fl.aggregate import create_aggregator

FL_DEFAULTS: dict[str, Any] = {
    "rounds": 10,  # federated rounds
    "local_steps": 0,  # optimizer steps per site and round (0 = auto: the pooled budget / rounds)
    "local_epochs": 0,  # alternative: passes over each site's bags per round (0 = unset)
    "proximal_mu": 0.0,  # FedProx mu (0 = FedAvg)
    "aggregation": "fedavg",  # fedavg | median | trimmed-mean | fedavgm | fedadam | fedyogi
    # | fedadagrad (pathfl.fl.aggregate)
    "trim_fraction": 0.2,  # trimmed-mean: fraction dropped at each end, per coordinate
    # server optimisers (pathfl.fl.server_opt); None = the optimiser's own default, listed
    # with its registry entry (`pathfl fl simulate --list aggregation`) and in docs/federation.md
    "server_lr": None,  # server learning rate eta
    "server_momentum": None,  # fedavgm momentum
    "server_beta1": None,  # fedadam/fedyogi/fedadagrad first-moment decay
    "server_beta2": None,  # fedadam/fedyogi second-moment decay
    "server_tau": None,  # fedadam/fedyogi/fedadagrad adaptivity (added to sqrt(v))
    "min_sites": 2,  # fewer replies in a round -> the run stops with an error
    "num_sites": 0,  # sites to wait for before round 1 (0 = min_sites)
    "connect_timeout_s": 300.0,  # how long to wait for num_sites to connect
    "round_timeout_s": 900.0,  # per round: replies later than this are dropped
    "poll_interval_s": 0.2,  # how often the server pulls replies from the SuperLink
    "seed": 0,
    "val_folds": 4,  # each site keeps fold 0 of k as its validation part
    "time_bins": [],  # explicit inner cut points (else: from the federation histogram)
    "time_grid_max": 0.0,  # upper end of the histogram grid, in the clinical time unit
    "time_grid_cells": 64,  # histogram grid resolution
    "allowed_sites": [],  # site names that may take part (empty = every registered site)
    "compat_policy": "refuse",  # refuse | exclude sites whose feature fingerprint differs
    "reject_norm_factor": 5.0,  # update-norm outlier test (robust z), 0 = off
    "reject_norm_ratio": 0.0,  # reject norm > ratio * median, 0 = off
    "linear_cox": True,  # fit the federated linear-cox baseline (Newton) after the rounds
    # client-side DP-SGD (pathfl.fl.trust.privacy), off by default
    "dp": False,
    "dp_noise_multiplier": None,
    "dp_max_grad_norm": 1.0,
    "dp_delta": 1e-5,
    "dp_epsilon": None,
    "dp_sample_rate": None,
}
ALWAYS_CHECKED = (
    "model",
    "loss",
    "rounds",
    "local_epochs",
    "local_steps",
    "steps_per_round",
    "dp",
    "dp_epsilon",
)


def train_keys() -> set[str]:
    from pathfl.survival.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def valid_keys() -> set[str]:
    """The keys a federated run config may hold: the federation keys and TrainConfig's."""
    return set(FL_DEFAULTS) | train_keys()


def effective_config(user: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults + ``user`` (YAML keys with '-' or '_'), validated; adds ``train`` (the
    TrainConfig dict the sites build their model from) and ``user_keys``."""
    from pathfl.survival.train import TrainConfig

    user = {k: v for k, v in normalize_keys(user).items() if v is not None}
    tkeys = train_keys()
    check_keys(user, valid_keys(), source="federated config")
    cfg = {**FL_DEFAULTS, **{k: v for k, v in user.items() if k in FL_DEFAULTS}}
    tdict = {k: v for k, v in user.items() if k in tkeys}
    tdict["seed"] = int(cfg["seed"])
    try:
        train = TrainConfig.from_dict(tdict)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"federated config: {e}") from e
    cfg["train"] = train.to_dict()
    cfg["model"], cfg["loss"] = train.model, train.loss
    cfg["user_keys"] = sorted(user)
    _validate(cfg)
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
    from pathfl.survival.heads import create_head

    if int(cfg["rounds"]) < 1:
        raise ConfigError("rounds must be >= 1")
    steps, epochs = int(cfg["local_steps"] or 0), int(cfg["local_epochs"] or 0)
    if steps < 0 or epochs < 0:
        raise ConfigError("local_steps and local_epochs must be >= 0 (0 = automatic)")
    if steps and epochs:
        raise ConfigError(
            f"set local_steps ({steps}) or local_epochs ({epochs}), not both: local_steps fixes "
            "the optimizer steps per round, local_epochs the passes over each site's bags"
        )
    if int(cfg["min_sites"]) < 1:
        raise ConfigError("min_sites must be >= 1")
    if float(cfg["proximal_mu"]) < 0:
        raise ConfigError("proximal_mu must be >= 0")
    try:
        aggregator_for(cfg)
    except (KeyError, ValueError) as e:  # UnknownNameError lists the valid names
        raise ConfigError(f"aggregation: {e}") from None
    if cfg["compat_policy"] not in ("refuse", "exclude"):
        raise ConfigError("compat_policy must be 'refuse' or 'exclude'")
    bins = list(cfg["time_bins"] or [])
    if create_head(str(cfg["loss"])).needs_time_bins:
        if bins:
            if len(bins) != int(cfg["train"]["n_bins"]) - 1 or sorted(bins) != bins:
                raise ConfigError(
                    f"time_bins must be {int(cfg['train']['n_bins']) - 1} increasing cut points"
                )
        elif float(cfg["time_grid_max"]) <= 0:
            raise ConfigError(
                "the nll loss needs time-bin cut points fixed before round 1: set `time_bins` "
                "(explicit cut points) or `time_grid_max` (longest follow-up in your time "
                "unit; the bins are then placed at quantiles of the federation's event-time "
                "histogram — see docs/federation.md)"
            )


def aggregation_options(cfg: Mapping[str, Any]) -> dict[str, float | None]:
    """The settings of the aggregation rules in ``cfg`` (None = the rule's default)."""
    keys = ("trim_fraction", *(k for k in FL_DEFAULTS if k.startswith("server_")))
    return {k: None if cfg.get(k) is None else float(cfg[k]) for k in keys}


def aggregator_for(cfg: Mapping[str, Any]) -> Any:
    """The run's aggregation rule (:func:`pathfl.fl.aggregate.create_aggregator`)."""
    return create_aggregator(str(cfg["aggregation"]), **aggregation_options(cfg))


def strategy_name(cfg: Mapping[str, Any]) -> str:
    """The run's strategy as recorded in ``metrics.json``: the server aggregation (``fedavg``,
    ``median``, ``trimmed-mean``), with ``fedprox`` for a local objective with ``proximal_mu
    > 0`` (``fedprox`` alone when the aggregation is the weighted mean, else
    ``fedprox+median`` / ``fedprox+trimmed-mean``)."""
    aggregation = str(cfg["aggregation"])
    if float(cfg["proximal_mu"]) <= 0:
        return aggregation
    return "fedprox" if aggregation == "fedavg" else f"fedprox+{aggregation}"


def run_timeout_s(cfg: Mapping[str, Any]) -> float:
    """How long a run may take before its caller gives up: the connect timeout plus a round
    deadline for each round, the check-in and the final evaluation."""
    rounds, per_round = int(cfg["rounds"]), float(cfg["round_timeout_s"])
    return float(cfg["connect_timeout_s"]) + (rounds + 2) * per_round


def policy_view(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the configuration a site policy is checked against: the keys the
    researcher set plus those always checked (TrainConfig keys read from ``cfg["train"]``)."""
    keys = set(cfg.get("user_keys", [])) | set(ALWAYS_CHECKED)
    train = cfg.get("train", {})
    out = {k: cfg[k] if k in cfg else train.get(k) for k in sorted(keys)}
    return {k: v for k, v in out.items() if v is not None}
