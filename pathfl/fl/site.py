"""What a site does with a request, independent of Flower: load its own data, split it into
a local training and validation part, answer the pre-round-1 query, train one round with
:func:`pathfl.survival.train.train_local`, evaluate with :func:`pathfl.survival.train.evaluate`.

The Flower ClientApp (:mod:`pathfl.fl.flower.client_app`) is a thin adapter over these
functions, and the simulation's local-only / pooled baselines use the same split
(:func:`split_bags`), so the three C-indices count exactly the same within-site pairs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.fl import aggregate
from pathfl.fl.trust.records import EVAL_KEYS, TRAIN_KEYS, clean_metrics

logger = logging.getLogger(__name__)

# keys of the Flower node config (``pathfl fl site`` writes them; TOML strings)
NODE_SITE, NODE_FEATURES, NODE_CLINICAL = "site", "features", "clinical"
NODE_POLICY, NODE_AUDIT = "policy", "audit-log"


@dataclass
class SiteSpec:
    """One site of a local federation: its name and the files it trains on."""

    name: str
    features: Path
    clinical: Path
    policy: Path | None = None


@dataclass
class SiteData:
    site: str
    features_dir: Path
    train: list[Any]
    val: list[Any]
    feature_dim: int
    state_dir: Path = Path(".")
    _scaled: dict[str, tuple[list, list]] = field(default_factory=dict, repr=False)

    @property
    def n_patients(self) -> int:
        return len(self.train) + len(self.val)

    def scaled(self, cfg: Mapping[str, Any]) -> tuple[list, list]:
        """(train, val) standardised with the federation's scaler ``cfg["scaler"]`` (the raw
        bags when the run has none); the last result is kept for the next request."""
        import json

        from pathfl.survival.scaling import BagScaler

        d = cfg.get("scaler")
        if not d:
            return self.train, self.val
        key = json.dumps(d, sort_keys=True)
        if key not in self._scaled:
            scaler = BagScaler.from_dict(d)
            self._scaled = {key: (scaler.apply(self.train), scaler.apply(self.val))}
        return self._scaled[key]


def split_bags(bags: Sequence[Any], *, val_folds: int, seed: int) -> tuple[list, list]:
    """Site-local train/validation split: fold 0 of ``make_folds(k=val_folds)`` is the
    validation part (stratified by event). ``val_folds=0`` = no validation part."""
    from pathfl.survival.data import make_folds

    if val_folds <= 0:
        return list(bags), []
    tr, va = make_folds(bags, k=val_folds, seed=seed)[0]
    return [bags[i] for i in tr], [bags[i] for i in va]


def node_paths(node_config: Mapping[str, Any]) -> dict[str, str]:
    missing = [k for k in (NODE_SITE, NODE_FEATURES, NODE_CLINICAL) if not node_config.get(k)]
    if missing:
        raise ValueError(
            f"node config lacks {missing}: start the site with `pathfl fl site --features DIR "
            '--clinical CSV --name SITE` (or --node-config \'site="a" features="..." ...\')'
        )
    return {k: str(v) for k, v in node_config.items()}


def load_site(node_config: Mapping[str, Any], cfg: Mapping[str, Any]) -> SiteData:
    """Read the site's clinical table and feature bags named in its node config."""
    from pathfl.fl.fed_stats import covariates_of
    from pathfl.survival.data import load_bags, load_clinical

    paths = node_paths(node_config)
    covariates = covariates_of(cfg)
    clinical = load_clinical(paths[NODE_CLINICAL], covariates=covariates)
    bags = load_bags(paths[NODE_FEATURES], clinical, covariates=covariates)
    if not bags:
        raise ValueError(f"site {paths[NODE_SITE]}: no patient bags in {paths[NODE_FEATURES]}")
    train, val = split_bags(bags, val_folds=int(cfg["val_folds"]), seed=int(cfg["seed"]))
    return SiteData(
        site=paths[NODE_SITE],
        features_dir=Path(paths[NODE_FEATURES]),
        train=train,
        val=val,
        feature_dim=bags[0].feature_dim,
        state_dir=default_audit_path(node_config).parent,
    )


def site_seed(seed: int, round_no: int, site: str) -> int:
    """Deterministic per-(round, site) training seed, so a resumed run repeats the same rounds."""
    return int(seed) * 1_000_003 + int(round_no) * 1009 + zlib.crc32(site.encode()) % 997


def query_reply(data: SiteData, cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """(site config record, counts metric record) for the pre-round-1 query. The event-time
    histogram on the federation grid is included only when the server asks for it (the
    moments go in a record of their own: :func:`pathfl.fl.fed_stats.site_moments`)."""
    from pathfl.fl.trust.compat import site_fingerprint

    fp = {k: v for k, v in site_fingerprint(data.features_dir).items() if v is not None}
    fp["feature_dim"] = int(data.feature_dim)
    info = {"site": data.site, **{k: _config_value(v) for k, v in fp.items()}}
    counts: dict[str, Any] = {
        "num-examples": len(data.train),
        "n_events": int(sum(int(b.event) for b in data.train)),
    }
    if cfg.get("time_grid_max"):
        edges = aggregate.time_grid(float(cfg["time_grid_max"]), int(cfg["time_grid_cells"]))
        t = np.array([b.time for b in data.train], float)
        e = np.array([b.event for b in data.train], int)
        counts["time_hist"] = [int(c) for c in aggregate.event_histogram(t, e, edges)]
    return info, counts


def _config_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def train_config(cfg: Mapping[str, Any]) -> Any:
    from pathfl.survival.train import TrainConfig

    return TrainConfig.from_dict({k: v for k, v in cfg["train"].items()})


def build_global_model(cfg: Mapping[str, Any], feature_dim: int, arrays: list[np.ndarray]) -> Any:
    from pathfl.fl.fed_stats import covariates_of
    from pathfl.fl.trust.records import arrays_to_state
    from pathfl.survival.train import build_model

    n_cov = len(covariates_of(cfg))
    model = build_model(train_config(cfg), feature_dim=feature_dim, n_covariates=n_cov)
    names = list(model.state_dict().keys())
    model.load_state_dict(arrays_to_state(names, arrays))
    return model


def evaluate_site(model: Any, data: SiteData, cfg: Mapping[str, Any]) -> dict[str, float]:
    """Validation metrics of ``model`` on the site's validation part (pair counts included)."""
    from pathfl.survival.train import evaluate

    if not data.val:
        return {"val_n_samples": 0.0}
    val = data.scaled(cfg)[1]
    m = evaluate(model, val, train_config(cfg), time_bins=np.asarray(cfg["time_bins"]))
    return clean_metrics(m, prefix="val_", keys=EVAL_KEYS)


def train_round(
    data: SiteData, cfg: Mapping[str, Any], arrays: list[np.ndarray], *, round_no: int
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Evaluate the received global model on the validation part, then train it locally on
    the standardised training part for this round's steps (:func:`fed_stats.site_steps`),
    covering the round's share of the learning-rate schedule (FedProx when ``proximal_mu``
    > 0). Returns (new arrays, metrics)."""
    from pathfl.fl.fed_stats import round_span, site_steps
    from pathfl.fl.trust.records import state_to_arrays
    from pathfl.survival.train import train_local

    model = build_global_model(cfg, data.feature_dim, arrays)
    metrics = evaluate_site(model, data, cfg)
    train = data.scaled(cfg)[0]
    kwargs: dict[str, Any] = {
        "epochs": int(cfg.get("local_epochs") or 0),
        "steps": site_steps(cfg, len(train)),
        "schedule_span": round_span(cfg, round_no),
        "time_bins": np.asarray(cfg["time_bins"]),
        "proximal_mu": float(cfg["proximal_mu"]),
        "seed": site_seed(int(cfg["seed"]), round_no, data.site),
    }
    dp = _dp_config(cfg)
    if dp is not None:
        from pathfl.fl.trust.accountant import PrivacyLedger, ledger_path
        from pathfl.fl.trust.privacy import dp_train_local

        # site-local accountant history, keyed so that a resumed run keeps spending it
        path = ledger_path(data.state_dir, cfg)
        ledger = PrivacyLedger.load(path)
        stats = dp_train_local(model, train, train_config(cfg), dp, ledger=ledger, **kwargs)
        ledger.save(path)
    else:
        stats = train_local(model, train, train_config(cfg), **kwargs)
    metrics.update(clean_metrics(stats, prefix="train_", keys=TRAIN_KEYS))
    metrics["num-examples"] = float(len(data.train))
    _, new_arrays = state_to_arrays(model.state_dict())
    return new_arrays, metrics


def _dp_config(cfg: Mapping[str, Any]) -> Any:
    """The run's DP-SGD settings, or None when DP is off (PrivacyError for impossible ones,
    e.g. the Cox loss, which makes the site refuse the request)."""
    from pathfl.fl.trust.privacy import DPConfig

    dp = DPConfig.from_run_config(cfg)
    return dp if dp.enabled else None


def default_audit_path(node_config: Mapping[str, Any]) -> Path:
    if node_config.get(NODE_AUDIT):
        return Path(str(node_config[NODE_AUDIT]))
    return Path(os.path.expanduser("~")) / ".pathfl" / f"site-{node_config.get(NODE_SITE)}.jsonl"


class SiteCache:
    """Keeps a site's loaded data between requests (used by the long-running site worker)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._data: SiteData | None = None

    def get(self, node_config: Mapping[str, Any], cfg: Mapping[str, Any]) -> SiteData:
        from pathfl.fl.fed_stats import covariates_of

        paths = node_paths(node_config)
        key = (
            paths[NODE_FEATURES],
            paths[NODE_CLINICAL],
            int(cfg["val_folds"]),
            int(cfg["seed"]),
            tuple(covariates_of(cfg)),
        )
        if key != self._key or self._data is None:
            self._data, self._key = load_site(node_config, cfg), key
        return self._data


def handle(
    kind: str,
    node_config: Mapping[str, Any],
    cfg: Mapping[str, Any],
    arrays: list[np.ndarray] | None,
    *,
    cache: SiteCache | None = None,
) -> dict[str, Any]:
    """The site's answer to one request, as plain Python (the ClientApp turns it into Flower
    records and checks it against the whitelist): ``query`` → info + counts + moments,
    ``train`` → arrays + metrics, ``evaluate`` → metrics (+ the Breslow sums of Cox runs,
    :mod:`pathfl.fl.fed_breslow`), ``query.linear_cox`` → derivatives + metrics
    (:mod:`pathfl.fl.fed_linear_cox`)."""
    from pathfl.fl.trust.records import LINEAR_COX

    data = (cache or SiteCache()).get(node_config, cfg)
    if kind == "query":
        from pathfl.fl.fed_stats import site_moments

        info, counts = query_reply(data, cfg)
        return {"info": info, "counts": counts, "moments": site_moments(data.train, cfg)}
    if arrays is None:
        raise ValueError(f"a {kind} request needs the global model arrays")
    if kind == "train":
        new, metrics = train_round(data, cfg, arrays, round_no=int(cfg["round"]))
        return {"arrays": new, "metrics": metrics}
    if kind == "evaluate":
        from pathfl.fl.fed_breslow import site_part

        model = build_global_model(cfg, data.feature_dim, arrays)
        metrics = evaluate_site(model, data, cfg)
        metrics["num-examples"] = float(len(data.val))
        return {"metrics": metrics, **site_part(model, data, cfg)}
    if kind == LINEAR_COX:
        from pathfl.fl.fed_linear_cox import site_derivatives

        return site_derivatives(data, cfg, arrays)
    raise ValueError(f"unknown request kind {kind!r}")


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread, as each federated site's worker does (baselines,
    personalisation and unseen-site scoring then train exactly like the sites), then restore
    the previous thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
