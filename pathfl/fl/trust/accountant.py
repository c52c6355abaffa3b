"""The privacy accountant of client-side DP-SGD (:mod:`pathfl.fl.trust.privacy`): Rényi DP of
the Poisson-subsampled Gaussian mechanism in closed form at integer orders (Mironov, Talwar &
Zhang 2019), composed over every step of every round and converted to (ε, δ) with Balle et
al. 2020, Thm. 21 — the analysis opacus' ``RDPAccountant`` does, written out in numpy so a site
process never imports opacus (a test checks both give the same ε). A site keeps its history
in a site-local ledger file per run (:func:`ledger_path`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic


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
