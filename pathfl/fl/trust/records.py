"""What may travel between the aggregator and a site, and its conversion to Flower records.

Every reply a site sends is checked by :func:`check_reply` *before* it leaves the ClientApp
(fail closed): only the record names, record types and metric keys whitelisted here for that
message kind are allowed, metric values must be finite-or-NaN scalars (the one list allowed is
the fixed-length event-time histogram of the ``query`` reply, see docs/federation.md). Array
records other than the model weights of a ``train`` reply must hold exactly named float
arrays: the ``query`` reply's ``moments`` (sums over the site's training patients, see
:mod:`pathfl.fl.fed_stats`) and the ``query.linear_cox`` reply's ``derivatives`` (gradient and
Hessian of the site's Cox partial likelihood, :mod:`pathfl.fl.fed_linear_cox`) and the
final ``evaluate`` reply's ``breslow`` (per-grid-cell event counts and sums of exp(risk) over
the risk set, :mod:`pathfl.fl.fed_breslow`). No patient ids, times, risks or per-patient values can
pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pathfl.survival.fingerprint import FINGERPRINT_FIELDS

# message kinds (Flower message types are "<category>" or "<category>.<action>")
QUERY, TRAIN, EVALUATE = "query", "train", "evaluate"
LINEAR_COX = "query.linear_cox"  # one Newton–Raphson step of the federated linear-cox

EVAL_KEYS = (
    "c_index",
    "n_concordant",
    "n_comparable",
    "n_tied_risk",
    "loss",
    "n_samples",
    "n_events",
)
TRAIN_KEYS = (
    "loss",
    "n_samples",
    "steps",
    "epochs_run",
    "best_epoch",
    "val_loss",
    "dp_epsilon",
    "dp_epsilon_round",
    "dp_delta",
    "dp_noise_multiplier",
    "dp_max_grad_norm",
    "dp_sample_rate",
    "dp_steps",
)
FINGERPRINT_KEYS = (*FINGERPRINT_FIELDS, "n_files")
MOMENT_KEYS = frozenset(f"{g}_{s}" for g in ("tile", "cov", "row") for s in ("n", "sum", "sumsq"))
DERIVATIVE_KEYS = frozenset({"gradient", "hessian"})
BRESLOW_KEYS = frozenset({"events", "exp_risk_sums"})

# reply whitelists: record name -> (record type, allowed keys or None for arrays)
REPLY_WHITELIST: dict[str, dict[str, tuple[str, frozenset[str] | None]]] = {
    QUERY: {
        "site": ("config", frozenset({"site", *FINGERPRINT_KEYS})),
        "counts": ("metric", frozenset({"num-examples", "n_events", "time_hist"})),
        "moments": ("array", MOMENT_KEYS),
    },
    TRAIN: {
        "arrays": ("array", None),
        "metrics": (
            "metric",
            frozenset(
                {"num-examples", "compute_s"}
                | {f"train_{k}" for k in TRAIN_KEYS}
                | {f"val_{k}" for k in EVAL_KEYS}
            ),
        ),
    },
    EVALUATE: {
        "metrics": (
            "metric",
            frozenset({"num-examples", "compute_s"} | {f"val_{k}" for k in EVAL_KEYS}),
        ),
        "breslow": ("array", BRESLOW_KEYS),
    },
    LINEAR_COX: {
        "derivatives": ("array", DERIVATIVE_KEYS),
        "metrics": (
            "metric",
            frozenset(
                {"num-examples", "compute_s", "loglik", "n_events"}
                | {f"val_{k}" for k in EVAL_KEYS if k != "loss"}
            ),
        ),
    },
}
LIST_METRICS = frozenset({"time_hist"})


class ReplyNotAllowedError(RuntimeError):
    """A reply would carry something that is not whitelisted for its message kind."""


def _record_type(record: Any) -> str:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    if isinstance(record, ArrayRecord):
        return "array"
    if isinstance(record, MetricRecord):
        return "metric"
    if isinstance(record, ConfigRecord):
        return "config"
    return type(record).__name__


def check_reply(kind: str, content: Any) -> None:
    """Raise :class:`ReplyNotAllowedError` unless ``content`` (a Flower ``RecordDict``) holds only
    the records, keys and value types whitelisted for ``kind``."""
    if kind not in REPLY_WHITELIST:
        raise ReplyNotAllowedError(f"unknown message kind {kind!r}")
    allowed = REPLY_WHITELIST[kind]
    for name, record in content.items():
        if name not in allowed:
            raise ReplyNotAllowedError(f"{kind} reply: record {name!r} is not whitelisted")
        want_type, keys = allowed[name]
        got = _record_type(record)
        if got != want_type:
            raise ReplyNotAllowedError(
                f"{kind} reply: record {name!r} is {got}, expected {want_type}"
            )
        if keys is None:
            continue
        if want_type == "array":
            _check_named_arrays(kind, name, record, keys)
            continue
        for key, value in record.items():
            if key not in keys:
                raise ReplyNotAllowedError(f"{kind} reply: key {name}.{key} is not whitelisted")
            if isinstance(value, list):
                if key not in LIST_METRICS or not all(isinstance(v, int) for v in value):
                    raise ReplyNotAllowedError(f"{kind} reply: {name}.{key} must be a scalar")
            elif not isinstance(value, (int, float, str, bool)):
                raise ReplyNotAllowedError(f"{kind} reply: {name}.{key} has type {type(value)}")
            elif isinstance(value, str) and want_type != "config":
                raise ReplyNotAllowedError(f"{kind} reply: {name}.{key} must be numeric")


def _check_named_arrays(kind: str, name: str, record: Any, keys: frozenset[str]) -> None:
    for key, arr in record.items():
        if key not in keys:
            raise ReplyNotAllowedError(f"{kind} reply: array {name}.{key} is not whitelisted")
        if not np.issubdtype(np.dtype(arr.dtype), np.floating):
            raise ReplyNotAllowedError(f"{kind} reply: array {name}.{key} has dtype {arr.dtype}")


def to_named_array_record(arrays: Mapping[str, np.ndarray]) -> Any:
    """An ArrayRecord of named arrays (moments, derivatives)."""
    from flwr.app import Array, ArrayRecord

    rec = ArrayRecord()
    for k, a in arrays.items():
        rec[str(k)] = Array.from_numpy_ndarray(np.ascontiguousarray(a))
    return rec


def from_named_array_record(record: Any) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v.numpy()) for k, v in record.items()}


def state_to_arrays(state: Mapping[str, Any]) -> tuple[list[str], list[np.ndarray]]:
    """A torch ``state_dict`` as (names, numpy arrays) in its own order."""
    names = list(state.keys())
    return names, [np.ascontiguousarray(state[n].detach().cpu().numpy()) for n in names]


def arrays_to_state(names: list[str], arrays: list[np.ndarray]) -> dict[str, Any]:
    import torch

    if len(names) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(names)} model tensors")
    return {n: torch.from_numpy(np.array(a, copy=True)) for n, a in zip(names, arrays, strict=True)}


def to_array_record(arrays: list[np.ndarray]) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord(list(arrays))


def from_array_record(record: Any) -> list[np.ndarray]:
    return [np.asarray(a) for a in record.to_numpy_ndarrays()]


def encode_config(cfg: Mapping[str, Any]) -> Any:
    """The run's effective configuration, sent to sites as one JSON string (ConfigRecord)."""
    from flwr.app import ConfigRecord

    return ConfigRecord({"json": json.dumps(dict(cfg), sort_keys=True)})


def decode_config(record: Any) -> dict[str, Any]:
    return dict(json.loads(str(record["json"])))


def clean_metrics(metrics: Mapping[str, Any], *, prefix: str, keys: tuple[str, ...]) -> dict:
    """Keep the whitelisted ``keys`` of ``metrics`` as floats under ``prefix``."""
    out: dict[str, float] = {}
    for k in keys:
        if k in metrics and metrics[k] is not None:
            v = float(metrics[k])
            out[f"{prefix}{k}"] = v if math.isfinite(v) else float("nan")
    return out
