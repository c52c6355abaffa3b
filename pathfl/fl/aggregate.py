"""Pure aggregation functions of the federation (no Flower, no torch): weighted FedAvg, the
robust coordinate-wise median and trimmed mean, and the server optimisers FedAvgM, FedAdam,
FedYogi, FedAdagrad (:mod:`pathfl.fl.server_opt`) — a registry, ``create_aggregator`` /
``list_aggregators``: the server's ``aggregate_train`` — the federation-level C-index from
per-site pair counts, and federation-wide time-bin cut points from per-site event-time
histograms.

FedProx needs nothing here: its proximal term ``mu/2 · ||w - w_global||²`` is added to each
site's local loss by :func:`pathfl.survival.train.train_local`; the server still averages the
returned weights with :func:`weighted_average`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from pathfl.registry import Registry

#: ``(updates, weights) -> aggregated arrays``; weights are the sites' patient counts
Aggregator = Callable[[Sequence[Sequence[np.ndarray]], Sequence[float]], list[np.ndarray]]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation")


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
    return [_cast(np.tensordot(w, x, axes=1) / w.sum(), dt) for x, dt in _stacked(updates)]


def _stacked(updates: Sequence[Sequence[np.ndarray]]) -> Iterator[tuple[np.ndarray, np.dtype]]:
    """Per array position: that array of every update stacked along a new first axis
    (float64), with update 0's dtype. Raises when the updates differ in layout."""
    if not updates:
        raise ValueError("no updates to aggregate")
    n_arrays = len(updates[0])
    for k, u in enumerate(updates):
        if len(u) != n_arrays:
            raise ValueError(f"update {k} has {len(u)} arrays, update 0 has {n_arrays}")
    for i in range(n_arrays):
        ref = np.asarray(updates[0][i])
        for k, u in enumerate(updates):
            if np.shape(u[i]) != ref.shape:
                raise ValueError(
                    f"array {i}: update {k} has shape {np.shape(u[i])}, expected {ref.shape}"
                )
        yield np.stack([np.asarray(u[i], dtype=np.float64) for u in updates]), ref.dtype


def _cast(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return (np.rint(acc) if np.issubdtype(dtype, np.integer) else acc).astype(dtype)


def coordinate_median(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Coordinate-wise median of the updates, unweighted (Yin et al. 2018). Fewer than half
    of the sites cannot move any coordinate outside the range of the honest sites' values;
    with an even number of sites the two middle values are averaged."""
    return [_cast(np.median(x, axis=0), dt) for x, dt in _stacked(updates)]


def trimmed_mean(
    updates: Sequence[Sequence[np.ndarray]], *, trim_fraction: float
) -> list[np.ndarray]:
    """Coordinate-wise trimmed mean, unweighted (Yin et al. 2018): per coordinate, drop the
    ``floor(trim_fraction · n)`` largest and as many smallest values of the ``n`` sites,
    average the rest. ``trim_fraction`` in [0, 0.5); 0 is the plain unweighted mean, and
    with 3 sites any fraction < 1/3 trims nothing."""
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    n = len(updates)
    k = math.floor(trim_fraction * n + 1e-9)
    return [_cast(np.sort(x, axis=0)[k : n - k].mean(axis=0), dt) for x, dt in _stacked(updates)]


@AGGREGATORS.register("fedavg", summary="mean weighted by patients per site (FedAvg)")
def _fedavg() -> Aggregator:
    return weighted_average


@AGGREGATORS.register("median", summary="coordinate-wise median, unweighted (robust)")
def _median() -> Aggregator:
    return lambda updates, _weights: coordinate_median(updates)


@AGGREGATORS.register(
    "trimmed-mean",
    summary="coordinate-wise trimmed mean, unweighted (robust; trim_fraction)",
    options=("trim_fraction",),
)
def _trimmed(*, trim_fraction: float = 0.2) -> Aggregator:
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return lambda updates, _weights: trimmed_mean(updates, trim_fraction=trim_fraction)


# Server optimisers (pathfl.fl.server_opt): FedAvg, then a step on the pseudo-gradient.
# Defaults: Flower 1.42's strategies (eta, beta_1, beta_2, tau), except FedAdam's eta = 0.03
# (Flower: 0.1, which lost 0.03-0.06 C on the unseen-site benchmark; BENCHMARKS.md
# "unseen_site") and FedAvgM momentum 0.9 as in Hsu et al. 2019 (Flower's 0.0 would be FedAvg).
_ADAPTIVE = ("server_lr", "server_beta1", "server_beta2", "server_tau")


@AGGREGATORS.register(
    "fedavgm",
    summary="FedAvg + server momentum (Hsu et al. 2019; server_lr 1.0, server_momentum 0.9)",
    options=("server_lr", "server_momentum"),
)
def _fedavgm(*, server_lr: float = 1.0, server_momentum: float = 0.9) -> Aggregator:
    from pathfl.fl.server_opt import ServerOptimizer

    return ServerOptimizer("avgm", float(server_lr), momentum=float(server_momentum))


def _adaptive(rule: str, lr: float, b1: float, b2: float, tau: float) -> Aggregator:
    from pathfl.fl.server_opt import ServerOptimizer

    return ServerOptimizer(rule, float(lr), beta1=float(b1), beta2=float(b2), tau=float(tau))


def _register_adam_like(name: str, rule: str, *, lr: float, paper: str, note: str = "") -> None:
    """``name``: FedAvg + server ``rule`` with Flower's betas 0.9/0.99 and tau 1e-3."""

    @AGGREGATORS.register(
        name,
        summary=f"FedAvg + server {paper} (Reddi et al. 2021; lr {lr:g}{note}, betas 0.9/0.99, "
        "tau 1e-3)",
        options=_ADAPTIVE,
    )
    def _factory(
        *,
        server_lr: float = lr,
        server_beta1: float = 0.9,
        server_beta2: float = 0.99,
        server_tau: float = 1e-3,
    ) -> Aggregator:
        return _adaptive(rule, server_lr, server_beta1, server_beta2, server_tau)


_register_adam_like("fedadam", "adam", lr=0.03, paper="Adam", note=" (Flower's 0.1 measured worse)")
_register_adam_like("fedyogi", "yogi", lr=0.01, paper="Yogi")


@AGGREGATORS.register(
    "fedadagrad",
    summary="FedAvg + server Adagrad (Reddi et al. 2021; lr 0.1, beta1 0, tau 1e-3)",
    options=("server_lr", "server_beta1", "server_tau"),
)
def _fedadagrad(
    *, server_lr: float = 0.1, server_beta1: float = 0.0, server_tau: float = 1e-3
) -> Aggregator:
    return _adaptive("adagrad", server_lr, server_beta1, 0.0, server_tau)


def create_aggregator(name: str, **options: float | None) -> Aggregator:
    """The aggregation rule ``name`` (see :func:`list_aggregators`). ``options`` may hold
    every rule's settings (a run config's); each rule takes those its registry entry lists
    (a None value = the rule's own default)."""
    takes = AGGREGATORS.meta(name).get("options", ())
    given = {k: v for k, v in options.items() if k in takes and v is not None}
    return AGGREGATORS.get(name)(**given)


def list_aggregators() -> list[str]:
    return AGGREGATORS.list()


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
