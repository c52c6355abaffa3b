"""Input standardisation fitted on training patients only.

* Tile features: per-feature mean/std over every tile of the training patients' bags.
* Clinical covariates: per-column mean/std over the training patients (one row each).

Both are fitted from *moments* ``(n, Σx, Σx²)`` so that a federation can fit exactly the
statistics a pooled fit would give, from sums each site computes on its own data
(:func:`moments`, :meth:`Standardizer.from_moments`). The fitted :class:`BagScaler` is stored in
the run's ``config.json`` (key ``scaler``) and applied by ``predict``, ``heatmap`` and federated
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

MIN_STD = 1e-8  # a constant column is centred, not scaled


Moments = tuple[float, np.ndarray, np.ndarray]  # (n, Σx, Σx²), float64


def moments(x: np.ndarray) -> Moments:
    """``(n, Σx, Σx²)`` of the rows of ``x`` (n, d), in float64."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.shape[0]), x.sum(axis=0), np.square(x).sum(axis=0)


def add_moments(parts: Sequence[Moments]) -> Moments:
    """Sum of per-site (or per-bag) moments."""
    if not parts:
        raise ValueError("no moments to add")
    n = sum(float(p[0]) for p in parts)
    s1 = np.sum([np.asarray(p[1], np.float64) for p in parts], axis=0)
    s2 = np.sum([np.asarray(p[2], np.float64) for p in parts], axis=0)
    return n, s1, s2


@dataclass
class Standardizer:
    """``(x - mean) / std`` per column; ``columns`` names them where they have names."""

    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @classmethod
    def from_moments(cls, m: Moments, *, columns: Sequence[str] = ()) -> Standardizer:
        n, s1, s2 = float(m[0]), np.asarray(m[1], np.float64), np.asarray(m[2], np.float64)
        if n < 1:
            raise ValueError("cannot standardise from 0 rows")
        mean = s1 / n
        var = np.maximum(s2 / n - mean**2, 0.0)  # population variance, as numpy's std()
        std = np.sqrt(var)
        std[std < MIN_STD] = 1.0
        return cls(mean.tolist(), std.tolist(), list(columns))

    @classmethod
    def fit(cls, x: np.ndarray, *, columns: Sequence[str] = ()) -> Standardizer:
        return cls.from_moments(moments(x), columns=columns)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def transform(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != self.dim:
            raise ValueError(f"standardiser fitted on {self.dim} columns, got {x.shape[-1]}")
        m = np.asarray(self.mean, np.float32)
        s = np.asarray(self.std, np.float32)
        return ((np.asarray(x, np.float32) - m) / s).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Standardizer:
        d = d or {}
        return cls(
            [float(v) for v in d.get("mean", [])],
            [float(v) for v in d.get("std", [])],
            [str(c) for c in d.get("columns", [])],
        )


def tile_moments(bags: Sequence[Any]) -> Moments:
    """Moments of every tile of ``bags`` (their ``features`` arrays)."""
    return add_moments([moments(b.features) for b in bags])


def covariate_moments(bags: Sequence[Any]) -> Moments:
    """Moments of the bags' covariate vectors (one row per patient)."""
    return moments(np.stack([np.asarray(b.covariates, np.float64) for b in bags]))


@dataclass
class BagScaler:
    """Standardises a bag's tile features and covariates with training statistics. Either
    part may be empty (no feature scaling: runs made before pathfl 0.3; no covariates)."""

    features: Standardizer = field(default_factory=Standardizer)
    covariates: Standardizer = field(default_factory=Standardizer)

    @property
    def columns(self) -> list[str]:
        """The covariate columns, in model order."""
        return list(self.covariates.columns)

    @classmethod
    def fit(
        cls,
        bags: Sequence[Any],
        covariates: Sequence[str],
        *,
        standardize_features: bool = True,
    ) -> BagScaler:
        if not bags:
            raise ValueError("cannot fit a scaler on 0 bags")
        feats = Standardizer.from_moments(tile_moments(bags)) if standardize_features else None
        cov = (
            Standardizer.from_moments(covariate_moments(bags), columns=covariates)
            if covariates
            else Standardizer()
        )
        return cls(feats or Standardizer(), cov)

    def apply(self, bags: Sequence[Any]) -> list[Any]:
        """New bags with standardised (float32) features and covariates."""
        out = []
        for b in bags:
            kw: dict[str, Any] = {}
            if self.features.dim:
                kw["features"] = self.features.transform(b.features)
                if getattr(b, "features_aug", None) is not None:  # same training statistics
                    kw["features_aug"] = self.features.transform(b.features_aug)
            if self.covariates.dim:
                if b.covariates is None:
                    raise ValueError(
                        f"patient {b.patient_id}: the model needs covariates {self.columns}"
                    )
                kw["covariates"] = self.covariates.transform(b.covariates)
            out.append(replace(b, **kw) if kw else b)
        return out

    def transform_features(self, x: np.ndarray) -> np.ndarray:
        return self.features.transform(x) if self.features.dim else np.asarray(x, np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.covariates.to_dict(),
            "feature_mean": self.features.mean,
            "feature_std": self.features.std,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> BagScaler:
        """Reads this format and the covariate-only one of earlier runs."""
        d = d or {}
        feats = Standardizer.from_dict(
            {"mean": d.get("feature_mean", []), "std": d.get("feature_std", [])}
        )
        return cls(feats, Standardizer.from_dict(d))
