"""Per-site personalisation of a trained (e.g. federated) model on one site's own data: a copy
of the model in which only one part is adapted, trained with the same loop as ``pathfl train``
(:func:`pathfl.survival.train.train_local`: AdamW, warm-up + cosine schedule, clipping) with
every other parameter frozen.

Parts:

- ``head``: the output MLP (``model.head``) is fine-tuned; the tile embedding and the attention
  keep the global weights.
- ``norm`` (FedBN-style): the input standardisation (the run's :class:`BagScaler`) is refitted
  on the site's own training bags, and the affine parameters of the model's normalisation
  layers (``LayerNorm`` in TransMIL; none in ABMIL/meanpool/chowder) are fine-tuned; every
  other weight stays global.

Nothing here talks to a federation: the caller keeps the result on the site."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathfl.survival.data import PatientBag
from pathfl.survival.scaling import BagScaler
from pathfl.survival.train import TrainConfig, train_local

logger = logging.getLogger(__name__)

PARTS = ("head", "norm")


@dataclass
class Personalised:
    """The adapted model, the scaler its inputs need, which parameters were trained."""

    model: Any
    scaler: BagScaler
    trained: list[str]
    stats: dict[str, float]


def check_part(part: str | None) -> None:
    """ConfigError (exit 2) for a ``--personalise`` value that is not one of :data:`PARTS`."""
    from pathfl.config import ConfigError

    if part is not None and part not in PARTS:
        raise ConfigError(f"--personalise {part!r}: choose from {', '.join(PARTS)}")


def trainable_names(model: Any, part: str) -> list[str]:
    """Names of the parameters ``part`` adapts (see the module docstring)."""
    import torch.nn as nn

    check_part(part)
    if part == "head":
        names = [n for n, _ in model.named_parameters() if n.startswith("head.")]
        if not names:
            raise ValueError(f"personalise head: {type(model).__name__} has no `head` module")
        return names
    norms = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)
    return [
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, mod in model.named_modules()
        if isinstance(mod, norms)
        for p_name, _ in mod.named_parameters(recurse=False)
    ]


def fine_tune(
    model: Any,
    scaler: BagScaler,
    bags: Sequence[PatientBag],
    config: TrainConfig,
    *,
    part: str,
    time_bins: Any,
    steps: int,
    seed: int,
) -> Personalised:
    """Adapt a deep copy of ``model`` to ``bags`` (raw, unscaled bags of one site): ``steps``
    optimizer steps on the parameters of ``part`` only (0 trainable parameters — ``norm`` on a
    model without normalisation layers — means only the scaler is refitted). ``model`` and
    ``scaler`` are left as they are."""
    if not bags:
        raise ValueError("personalise: the site has no training patients")
    names = set(trainable_names(model, part))
    local = copy.deepcopy(model)
    if part == "norm":
        standardize = bool(scaler.features.dim)
        scaler = BagScaler.fit(bags, scaler.columns, standardize_features=standardize)
    stats: dict[str, float] = {"steps": 0.0}
    if names:
        for n, p in local.named_parameters():
            p.requires_grad_(n in names)
        stats = train_local(
            local,
            scaler.apply(bags),
            config,
            epochs=0,
            steps=int(steps),
            time_bins=None if time_bins is None else np.asarray(time_bins),
            seed=seed,
        )
        for p in local.parameters():
            p.requires_grad_(True)
    local.eval()
    logger.info("personalised %s: %d parameter tensors, %d steps", part, len(names), stats["steps"])
    return Personalised(local, scaler, sorted(names), stats)
