"""Server-side validation of site replies before aggregation (pure, no Flower types).

A reply is rejected, with a reason, when it

* has a different number of arrays, or an array of the wrong shape or dtype,
* contains NaN or Inf,
* has a non-positive or non-finite example count,
* has an update norm far outside the others': ``|norm - median| > norm_factor * 1.4826 * MAD``
  (a robust z-score) *and* ``|norm - median| > min_rel_deviation * median`` (with the default
  4.0, only norms above 5x the median can be rejected: sites of different sizes legitimately
  send updates of different norms — AdamW moves weights about ``lr`` per step, so a site with
  more patients takes more steps per epoch and sends a larger update — and with 3 sites the MAD
  is often tiny); with fewer than ``min_for_outlier`` replies no outlier test runs;
  or, when ``max_norm_ratio`` is set, ``norm > max_norm_ratio * median``.

The "norm" is the L2 norm of the update ``reply - global`` when the global arrays are given,
otherwise of the reply itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826


@dataclass
class ValidationResult:
    """``accepted`` are indices into the replies that may be aggregated; ``rejected`` maps an
    index to its reasons; ``norms`` is each reply's update norm (NaN where not computable)."""

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, list[str]] = field(default_factory=dict)
    norms: list[float] = field(default_factory=list)
    median_norm: float = float("nan")

    def reasons(self, index: int) -> list[str]:
        return self.rejected.get(index, [])


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    total = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        total += float(np.sum(a * a))
    return float(np.sqrt(total))


def _structure_problems(
    arrays: Sequence[np.ndarray], reference: Sequence[tuple[tuple[int, ...], str]]
) -> list[str]:
    problems: list[str] = []
    if len(arrays) != len(reference):
        return [f"{len(arrays)} arrays, expected {len(reference)}"]
    for i, (a, (shape, dtype)) in enumerate(zip(arrays, reference, strict=True)):
        a = np.asarray(a)
        if tuple(a.shape) != tuple(shape):
            problems.append(f"array {i}: shape {tuple(a.shape)}, expected {tuple(shape)}")
        if np.dtype(a.dtype) != np.dtype(dtype):
            problems.append(f"array {i}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    return problems


def reference_from_arrays(arrays: Sequence[np.ndarray]) -> list[tuple[tuple[int, ...], str]]:
    """The ``(shape, dtype)`` list of a model's arrays, to check replies against."""
    return [(tuple(np.asarray(a).shape), np.asarray(a).dtype.str) for a in arrays]


def validate_updates(
    updates: Sequence[Sequence[np.ndarray]],
    *,
    reference_shapes_dtypes: Sequence[tuple[tuple[int, ...], str]],
    num_examples: Sequence[int] | None = None,
    global_arrays: Sequence[np.ndarray] | None = None,
    norm_factor: float | None = 5.0,
    max_norm_ratio: float | None = None,
    min_for_outlier: int = 3,
    min_rel_deviation: float = 4.0,
    labels: Sequence[str] | None = None,
) -> ValidationResult:
    """Check each reply (a list of arrays) and return the indices that may be aggregated.

    ``norm_factor=None`` switches the robust outlier test off. ``labels`` (e.g. site names)
    only make the log lines readable."""
    n = len(updates)
    names = list(labels) if labels is not None else [str(i) for i in range(n)]
    result = ValidationResult(norms=[float("nan")] * n)
    structurally_ok: list[int] = []
    for i, arrays in enumerate(updates):
        reasons = _structure_problems(arrays, reference_shapes_dtypes)
        if not reasons:
            for j, a in enumerate(arrays):
                a = np.asarray(a)
                if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
                    n_nan = int(np.isnan(a).sum())
                    n_inf = int(np.isinf(a).sum())
                    reasons.append(f"array {j}: {n_nan} NaN and {n_inf} Inf values")
        if num_examples is not None:
            k = num_examples[i]
            if not np.isfinite(k) or k <= 0:
                reasons.append(f"num_examples={k} (must be a positive count)")
        if reasons:
            result.rejected[i] = reasons
            continue
        if global_arrays is not None:
            delta = [
                np.asarray(a, np.float64) - np.asarray(g, np.float64)
                for a, g in zip(arrays, global_arrays, strict=True)
            ]
            result.norms[i] = l2_norm(delta)
        else:
            result.norms[i] = l2_norm(arrays)
        structurally_ok.append(i)

    norms = np.array([result.norms[i] for i in structurally_ok], dtype=np.float64)
    if len(norms):
        med = float(np.median(norms))
        result.median_norm = med
        mad = float(np.median(np.abs(norms - med)))
        # A floor keeps identical-norm replies (MAD=0) from rejecting tiny differences.
        scale = max(MAD_TO_SIGMA * mad, 1e-3 * med, 1e-12)
        for i in structurally_ok:
            norm = result.norms[i]
            if norm_factor is not None and len(norms) >= min_for_outlier:
                z = abs(norm - med) / scale
                if z > norm_factor and abs(norm - med) > min_rel_deviation * med:
                    result.rejected.setdefault(i, []).append(
                        f"update norm {norm:.4g} is {z:.1f} robust SDs from the median "
                        f"{med:.4g} (limit {norm_factor})"
                    )
            if max_norm_ratio is not None and med > 0 and norm > max_norm_ratio * med:
                result.rejected.setdefault(i, []).append(
                    f"update norm {norm:.4g} > {max_norm_ratio} x median {med:.4g}"
                )
    result.accepted = [i for i in range(n) if i not in result.rejected]
    for i, reasons in sorted(result.rejected.items()):
        logger.warning("rejected reply from %s: %s", names[i], "; ".join(reasons))
    return result
