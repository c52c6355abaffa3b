"""The training configuration (no heavy imports: the CLI reads its defaults)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pathfl.config import dataclass_from_dict

if TYPE_CHECKING:
    from pathfl.survival.heads import SurvivalHead

SCHEDULE_NAMES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Every knob of a survival MIL run (stored in the run's config.json).

    The optimisation budget is ``epochs`` passes over the training bags, but never fewer than
    ``min_steps`` optimizer steps (small cohorts have few batches per pass). The learning
    rate warms up linearly over ``warmup_fraction`` of the steps, then follows a cosine decay
    to ``lr · min_lr_fraction``. With ``early_stopping_patience > 0`` a patient-level inner
    split (``val_fraction``) is held out and the weights of the best validation loss are
    restored. Defaults were chosen on ``scripts/bench_learning.py`` (see BENCHMARKS.md)."""

    model: str = "abmil"
    loss: str = "cox"
    epochs: int = 30
    min_steps: int = 300
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine | constant
    warmup_fraction: float = 0.1
    min_lr_fraction: float = 0.02
    weight_decay: float = 1e-2
    risk_ridge: float = 1.0  # cox: ridge on the model's log-risks (linear-cox's α per patient)
    dropout: float = 0.5
    max_tiles: int = 2048  # training-time subsampling; evaluation uses every tile
    bags_per_batch: int = 32
    n_bins: int = 4
    alpha: float = 0.0
    seed: int = 0
    hidden_dim: int = 64
    attn_dim: int = 32
    chowder_k: int = 5
    transmil_heads: int = 4
    transmil_landmarks: int = 64
    grad_clip: float = 5.0
    early_stopping_patience: int = 0  # 0 = off; else passes without val-loss improvement
    val_fraction: float = 0.2  # inner validation split used when early stopping is on
    standardize: bool = True  # standardise tile features with training statistics
    feature_augmentation: bool = True  # train on features_aug copies when the files have them
    folds: int = 5
    covariates: list[str] = field(default_factory=list)
    n_boot: int = 200
    linear_cox_alpha: float = 1.0  # ridge penalty of the linear-cox baseline (per patient)
    time_unit: str = ""  # unit of the clinical time column ("" = not stated), shown on plots

    def __post_init__(self) -> None:
        from pathfl.survival.heads import create_head
        from pathfl.survival.models import MODELS

        MODELS.get(self.model)
        head = create_head(self.loss)
        if head.needs_time_bins and self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2 for the {self.loss} loss")
        if self.bags_per_batch < head.min_batch:
            raise ValueError(
                f"the {self.loss} loss needs bags_per_batch >= {head.min_batch} "
                "(one bag has no risk set)"
            )
        if self.epochs < 0 or self.min_steps < 0 or self.max_tiles < 1 or self.bags_per_batch < 1:
            raise ValueError(
                "epochs >= 0, min_steps >= 0, max_tiles >= 1 and bags_per_batch >= 1 are required"
            )
        if self.lr_schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"lr_schedule must be one of {list(SCHEDULE_NAMES)}, got {self.lr_schedule!r}"
            )
        if self.risk_ridge < 0:
            raise ValueError(f"risk_ridge must be >= 0, got {self.risk_ridge}")
        if not (0.0 <= self.warmup_fraction < 1.0 and 0.0 <= self.min_lr_fraction <= 1.0):
            raise ValueError("0 <= warmup_fraction < 1 and 0 <= min_lr_fraction <= 1 are required")

    @property
    def head(self) -> SurvivalHead:
        from pathfl.survival.heads import create_head

        return create_head(self.loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, d, what="TrainConfig option(s)")


#: one line of help per TrainConfig field (the CLI options of `pathfl train` are built from
#: the fields and this mapping; tests keep the two in step)
FIELD_HELP: dict[str, str] = {
    "model": "MIL model",
    "loss": "Survival head / loss (cox: Breslow ties, nll: discrete time)",
    "epochs": "Passes over the training bags.",
    "min_steps": "At least this many optimizer steps.",
    "lr": "Peak learning rate (warm-up + schedule).",
    "lr_schedule": f"Learning-rate decay after warm-up: {' | '.join(SCHEDULE_NAMES)}.",
    "warmup_fraction": "Fraction of the steps with a linear warm-up.",
    "min_lr_fraction": "Cosine decay ends at lr times this.",
    "weight_decay": "AdamW weight decay.",
    "risk_ridge": "Cox: penalty 1/2 x this x sum over a batch of (log-risk - its mean)^2, per "
    "event: linear-cox's ridge on the model's output (0 = off).",
    "dropout": "Dropout of the model.",
    "max_tiles": "Tiles sampled per bag in training (evaluation uses every tile).",
    "bags_per_batch": "Bags (patients) per optimizer step.",
    "n_bins": "Time bins of the nll loss.",
    "alpha": "nll: extra weight of uncensored terms.",
    "seed": "Seed of the folds, sampling and initialisation.",
    "hidden_dim": "Width of the bag embedding.",
    "attn_dim": "abmil: width of the attention network.",
    "chowder_k": "chowder: top and bottom tiles kept.",
    "transmil_heads": "transmil: attention heads.",
    "transmil_landmarks": "transmil: Nyström landmarks.",
    "grad_clip": "Gradient-norm clip (0 = off).",
    "early_stopping_patience": "Patience in passes on an inner split (0 = off).",
    "val_fraction": "Inner validation split used by early stopping.",
    "standardize": "Standardise tile features with training statistics.",
    "feature_augmentation": "Train on the features files' augmented copies (features_aug).",
    "folds": "Cross-validation folds (1 = no CV).",
    "covariates": "Clinical columns fused with the bag embedding.",
    "n_boot": "Bootstrap replicates for CIs.",
    "linear_cox_alpha": "Ridge penalty per patient of the linear-cox baseline.",
    "time_unit": "Unit of the clinical table's time column (days, months...), shown on plots.",
}


def default(name: str) -> Any:
    """The default value of TrainConfig field ``name``."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
