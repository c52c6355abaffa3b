"""Pure aggregation functions of the federation (no Flower, no torch): weighted FedAvg,
the federation-level C-index from per-site pair counts, and federation-wide time-bin cut
points from per-site event-time histograms.

FedProx needs nothing here: its proximal term ``mu/2 · ||w - w_global||²`` is added to each
site's local loss by :func:`pathfl.survival.train.train_local`; the server still averages the
returned weights with :func:`weighted_average`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """FedAvg: ``sum_k w_k · x_k / sum_k w_k`` per array (weights = patients per site).

    Computed in float64 and cast back to each array's dtype; integer arrays (e.g. a
    BatchNorm ``num_batches_tracked`` counter) are rounded. Every update must have the same
    number of arrays with the same shapes."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(w)}")
    n_arrays = len(updates[0])
    for k, u in enumerate(updates):
        if len(u) != n_arrays:
            raise ValueError(f"update {k} has {len(u)} arrays, update 0 has {n_arrays}")
    out: list[np.ndarray] = []
    for i in range(n_arrays):
        ref = np.asarray(updates[0][i])
        acc = np.zeros(ref.shape, dtype=np.float64)
        for k, u in enumerate(updates):
            a = np.asarray(u[i])
            if a.shape != ref.shape:
                raise ValueError(f"array {i}: update {k} has shape {a.shape}, expected {ref.shape}")
            acc += w[k] * a.astype(np.float64)
        acc /= w.sum()
        if np.issubdtype(ref.dtype, np.integer):
            acc = np.rint(acc)
        out.append(acc.astype(ref.dtype))
    return out


def federated_c_index(
    counts: Sequence[tuple[float, float, float]],
) -> float:
    """Harrell's C over the union of every site's comparable pairs:
    ``(sum concordant + 0.5 · sum tied_risk) / sum comparable``.

    ``counts`` = per site ``(n_concordant, n_comparable, n_tied_risk)`` as returned by
    :func:`pathfl.survival.metrics.concordance_counts`. Exact for within-site pairs; pairs of
    patients from two different sites are never compared (no site sees another's risks).
    Returns NaN when no site has a comparable pair."""
    conc = sum(float(c[0]) for c in counts)
    comp = sum(float(c[1]) for c in counts)
    tied = sum(float(c[2]) for c in counts) if counts and len(counts[0]) > 2 else 0.0
    if comp <= 0:
        return float("nan")
    return (conc + 0.5 * tied) / comp


def time_grid(grid_max: float, n_cells: int) -> np.ndarray:
    """Edges of the fixed, federation-wide grid on which sites histogram their event times."""
    if not (grid_max > 0 and np.isfinite(grid_max)) or n_cells < 2:
        raise ValueError(f"time grid needs grid_max > 0 and >= 2 cells, got {grid_max}, {n_cells}")
    return np.linspace(0.0, float(grid_max), int(n_cells) + 1)


def event_histogram(times: np.ndarray, events: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of *observed event* times per grid cell (times beyond the grid go to the last
    cell). This is what a site reveals to fix the time bins (see docs/federation.md)."""
    t = np.asarray(times, dtype=np.float64)[np.asarray(events).astype(bool)]
    t = np.clip(t, edges[0], edges[-1])
    counts, _ = np.histogram(t, bins=edges)
    return counts.astype(np.int64)


def cut_points_from_histogram(counts: np.ndarray, edges: np.ndarray, *, n_bins: int) -> np.ndarray:
    """Inner cut points (``n_bins - 1`` values) at the quantiles of the pooled event-time
    distribution, read off the summed histogram by linear interpolation of its empirical CDF.
    Mirrors :func:`pathfl.survival.train.fit_time_bins` up to the grid resolution."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) != len(edges) - 1:
        raise ValueError(f"{len(counts)} counts for {len(edges) - 1} grid cells")
    total = counts.sum()
    if total < n_bins:
        raise ValueError(f"only {int(total)} events in the federation: cannot place {n_bins} bins")
    edges = np.asarray(edges, dtype=np.float64)
    cdf = np.concatenate([[0.0], np.cumsum(counts) / total])
    cuts = []
    for q in np.linspace(0, 1, n_bins + 1)[1:-1]:
        # first non-empty cell whose upper CDF value reaches q; interpolate inside it
        j = int(np.flatnonzero((cdf[1:] >= q - 1e-12) & (counts > 0))[0])
        frac = (q - cdf[j]) / (cdf[j + 1] - cdf[j])
        cuts.append(edges[j] + frac * (edges[j + 1] - edges[j]))
    return np.asarray(cuts, dtype=float)
