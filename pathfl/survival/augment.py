"""Training-time feature augmentation from the ``features_aug`` copies of a features file.

``pathfl extract --stain-augment K`` stores, next to each tile's features, K feature vectors of
HED-jittered copies of the same tile (``features_aug`` (N, K, D), see
:mod:`pathfl.formats.features_h5`). In training, each step draws for every sampled tile of a
bag one of its K + 1 versions (the original or one of the copies, uniformly), from the
training RNG — so a run is repeatable under its seed. Evaluation, prediction and heatmaps never
see the copies (they call the model without an RNG and use ``PatientBag.features``), and the
input standardisation is fitted on the original features only
(:func:`pathfl.survival.scaling.tile_moments`), then applied to the copies alike.

``TrainConfig.feature_augmentation`` (default on) says whether copies a file has are used.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["concat_augmented", "n_versions", "sample_tiles", "training_bags"]


def n_versions(bag: Any) -> int:
    """Versions of each tile of ``bag`` a training step draws from (1 without copies)."""
    aug = getattr(bag, "features_aug", None)
    return 1 if aug is None else 1 + int(aug.shape[1])


def sample_tiles(bag: Any, rng: np.random.Generator, max_tiles: int | None) -> np.ndarray:
    """The tiles one training step feeds the model for ``bag``: at most ``max_tiles`` random
    tiles (kept in bag order), each replaced by a uniformly drawn one of its versions when the
    bag has augmented copies. Bags without copies consume the RNG exactly as before copies
    existed (only the subsampling draw)."""
    feats = bag.features
    n = feats.shape[0]
    idx = None
    if max_tiles is not None and n > max_tiles:
        idx = np.sort(rng.choice(n, size=max_tiles, replace=False))
    aug = getattr(bag, "features_aug", None)
    if aug is None:
        return feats if idx is None else feats[idx]
    rows = np.arange(n) if idx is None else idx
    version = rng.integers(0, aug.shape[1] + 1, size=len(rows))
    out = np.array(feats[rows])  # a copy: the bag's own features stay untouched
    pick = version > 0
    out[pick] = aug[rows[pick], version[pick] - 1]
    return out


def training_bags(bags: Sequence[Any], *, enabled: bool) -> Sequence[Any]:
    """``bags`` as training should see them: unchanged when augmentation is ``enabled``,
    else without their augmented copies."""
    if enabled or all(getattr(b, "features_aug", None) is None for b in bags):
        return bags
    return [dataclasses.replace(b, features_aug=None) for b in bags]


def concat_augmented(
    parts: Sequence[np.ndarray | None], *, n_rows: Sequence[int], patient_id: str
) -> np.ndarray | None:
    """One bag's ``features_aug`` from those of its slides (in slide order), or None when no
    slide has copies. Slides with a different number of copies, or without copies while
    others have them, leave the bag without augmentation (logged: the extraction runs
    differed)."""
    if all(p is None for p in parts):
        return None
    ks = {None if p is None else int(p.shape[1]) for p in parts}
    if len(ks) > 1:
        logger.warning(
            "patient %s: its slides have %s augmented copies per tile; training uses the "
            "original features only",
            patient_id,
            sorted(ks, key=str),
        )
        return None
    out = np.concatenate(parts, axis=0)  # type: ignore[arg-type]
    if out.shape[0] != sum(n_rows):
        raise ValueError(f"patient {patient_id}: features_aug rows do not match the features")
    return out
