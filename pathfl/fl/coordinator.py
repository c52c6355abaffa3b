"""The aggregator's run: site check-in, compatibility, federation-wide time bins, rounds of
FedAvg/FedProx with deadlines, update validation, checkpoints, audit, final model.

Called by the Flower ServerApp (:mod:`pathfl.fl.flower.server_app`) with a Flower ``Grid``; the
numerical work is delegated to pure functions (:mod:`pathfl.fl.aggregate`,
:mod:`pathfl.fl.trust.validation`, :mod:`pathfl.fl.trust.compat`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pathfl.fl import aggregate
from pathfl.fl.fl_config import aggregator_for
from pathfl.fl.rundir import RunDir
from pathfl.fl.server_loop import (
    Collected,
    FederationError,
    registered_names,
    send_and_collect,
    wait_for_nodes,
)
from pathfl.fl.server_opt import OptState, save_state, server_update
from pathfl.fl.trust import records

logger = logging.getLogger(__name__)


@dataclass
class _Replies:
    """The train replies of one round, in site-name order (``order``: node ids)."""

    got: Collected
    order: list[int]
    labels: list[str]
    updates: list[list[np.ndarray]]
    metrics: list[dict[str, Any]]
    n_ex: list[int]


class FederatedRun:
    def __init__(self, grid: Any, cfg: dict[str, Any], run_dir: RunDir, *, run_id: str) -> None:
        from pathfl.fl.trust.audit import AuditLog

        self.grid, self.cfg, self.dir, self.run_id = grid, cfg, run_dir, run_id
        self.audit = AuditLog(run_dir.audit, run_id=run_id)
        self.sites: dict[int, str] = {}  # node id -> site name (accepted sites only)
        self.time_bins: list[float] = []
        self.feature_dim = 0
        self.names: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.fingerprint: dict[str, Any] = {}
        self.scaler: Any = None  # BagScaler from the sites' moments (None: no scaling)
        self.row_scaler: Any = None  # linear-cox row Standardizer (None: not fitted)
        self.n_train = 0  # training patients over the accepted sites
        self.steps_per_round = 0  # optimizer steps per site and round (0: local_epochs)
        self.aggregator = aggregator_for(cfg)
        self.opt_state = OptState()  # server optimiser state (server only, checkpointed)

    # ------------------------------------------------------------------ helpers
    def run_config(self, round_no: int) -> dict[str, Any]:
        """The effective config a request carries: the run's, plus what the server fixed at
        check-in (time bins, scaler, steps per round, linear-cox row standardiser)."""
        from pathfl.fl.fed_linear_cox import CONFIG_KEY

        cfg = {**self.cfg, "round": round_no, "time_bins": self.time_bins, "run_id": self.run_id}
        cfg["scaler"] = self.scaler.to_dict() if self.scaler is not None else None
        cfg["steps_per_round"] = self.steps_per_round
        cfg[CONFIG_KEY] = self.row_scaler.to_dict() if self.row_scaler is not None else None
        return cfg

    def _content(self, round_no: int, *, arrays: list[np.ndarray] | None) -> Any:
        from flwr.app import RecordDict

        d: dict[str, Any] = {"config": records.encode_config(self.run_config(round_no))}
        if arrays is not None:
            d["arrays"] = records.to_array_record(arrays)
        return RecordDict(d)

    def _send(
        self,
        kind: str,
        round_no: int,
        nodes: list[int],
        *,
        arrays: list[np.ndarray] | None,
        group: str | None = None,
    ) -> Collected:
        contents = {n: self._content(round_no, arrays=arrays) for n in nodes}
        timeout = float(self.cfg["round_timeout_s"])
        if kind == records.QUERY:
            timeout = min(timeout, float(self.cfg["connect_timeout_s"]))
        return send_and_collect(
            self.grid,
            contents,
            message_type=kind,
            group_id=group or str(round_no),
            timeout_s=timeout,
            poll_s=float(self.cfg["poll_interval_s"]),
        )

    def _name(self, node: int) -> str:
        return self.sites.get(node, f"node-{node}")

    # ------------------------------------------------------------------ setup
    def check_in(self) -> None:
        """Query every connected site, check fingerprints, fix the time bins."""
        from pathfl.fl.trust.compat import check_compatibility

        min_sites = int(self.cfg["min_sites"])
        want = max(int(self.cfg["num_sites"]), min_sites)
        nodes = wait_for_nodes(
            self.grid, want=want, need=min_sites, timeout_s=float(self.cfg["connect_timeout_s"])
        )
        got = self._send(records.QUERY, 0, nodes, arrays=None)
        problems = {f"node-{n}": r for n, r in got.failed.items()}
        problems.update({f"node-{n}": "no reply to the check-in query" for n in got.missing})
        infos: dict[str, dict[str, Any]] = {}
        counts: dict[str, dict[str, Any]] = {}
        node_of: dict[str, int] = {}
        moments: dict[str, dict[str, np.ndarray]] = {}
        registered = registered_names(self.grid)
        allowed = set(self.cfg["allowed_sites"] or [])
        for node, reply in got.ok.items():
            info = dict(reply.content["site"])
            name = str(info.pop("site"))
            if registered.get(node) and registered[node] != name:
                # the name a site reports must be the one its key was registered under
                problems[f"node-{node}"] = (
                    f"reports site {name!r} but its key is registered as {registered[node]!r}"
                )
                continue
            if allowed and name not in allowed:
                problems[f"node-{node}"] = f"site {name!r} is not in allowed_sites"
                continue
            if name in infos:
                raise FederationError(f"two nodes report the same site name {name!r}")
            infos[name], counts[name], node_of[name] = info, dict(reply.content["counts"]), node
            if "moments" in reply.content:
                moments[name] = records.from_named_array_record(reply.content["moments"])
        if not infos:
            raise FederationError(f"no site answered the check-in query: {problems}")
        result = check_compatibility(
            infos, policy=str(self.cfg["compat_policy"]), min_sites=min_sites
        )
        self.dir.write_json(
            "sites.json",
            {
                "fingerprints": infos,
                "counts": {
                    k: {kk: vv for kk, vv in v.items() if kk != "time_hist"}
                    for k, v in counts.items()
                },
                "accepted": result.accepted,
                "excluded": result.excluded,
                "unanswered": problems,
                "registered_names": {str(k): v for k, v in registered.items()},
            },
        )
        self.audit.append(
            "check_in",
            sites=sorted(infos),
            accepted=result.accepted,
            excluded=result.excluded,
            unanswered=problems,
            messages=result.messages,
        )
        result.raise_for_status()
        if len(result.accepted) < min_sites:
            raise FederationError(
                f"only {len(result.accepted)} compatible site(s) {result.accepted}, "
                f"min_sites={min_sites}" + (f"; check-in failed at {problems}" if problems else "")
            )
        self.sites = {node_of[s]: s for s in sorted(result.accepted)}
        ref = infos[result.accepted[0]]
        self.feature_dim = int(ref["feature_dim"])
        self.fingerprint = dict(result.reference or ref)
        acc = result.accepted
        self._fix_statistics({s: counts[s] for s in acc}, {s: moments.get(s, {}) for s in acc})

    def _fix_statistics(
        self, counts: dict[str, dict[str, Any]], moments: dict[str, dict[str, np.ndarray]]
    ) -> None:
        """Time bins, scaler, linear-cox row standardiser and steps per round from the
        accepted sites' check-in replies (:mod:`pathfl.fl.fed_stats`)."""
        from pathfl.fl import fed_stats

        try:
            self.time_bins = fed_stats.time_bins(self.cfg, counts)
            self.scaler = fed_stats.federated_scaler(moments, self.cfg)
            self.row_scaler = fed_stats.row_standardizer(moments)
        except ValueError as e:
            raise FederationError(f"check-in: {e}") from None
        self.n_train = int(sum(int(c.get("num-examples", 0)) for c in counts.values()))
        self.steps_per_round = fed_stats.steps_per_round(self.cfg, self.n_train)
        logger.info(
            "federation: %d training patients, %s optimizer steps per site and round, "
            "scaler over %s",
            self.n_train,
            self.steps_per_round or f"{self.cfg.get('local_epochs')} local epoch(s) of",
            "tile features" if self.scaler and self.scaler.features.dim else "nothing",
        )

    def build_model(self) -> Any:
        """The run's model architecture (covariates included), seeded by the run seed."""
        from pathfl.fl.fed_stats import covariates_of
        from pathfl.fl.site import train_config
        from pathfl.survival.train import build_model

        n_cov = len(covariates_of(self.cfg))
        return build_model(train_config(self.cfg), feature_dim=self.feature_dim, n_covariates=n_cov)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run must reuse instead of recomputing at its check-in."""
        return {
            "scaler": self.scaler.to_dict() if self.scaler is not None else None,
            "steps_per_round": self.steps_per_round,
            "n_train": self.n_train,
        }

    def init_model(self) -> None:
        from pathfl.fl.trust.records import state_to_arrays

        model = self.build_model()
        self.names, self.arrays = state_to_arrays(model.state_dict())

    # ------------------------------------------------------------------ rounds
    def run_round(self, round_no: int) -> dict[str, Any]:
        """One round: send the global model, collect and validate the updates, aggregate the
        accepted ones, checkpoint, log the round and audit it. Returns the round's row of
        ``rounds.jsonl``; fewer than ``min_sites`` usable updates → :class:`FederationError`."""
        from pathfl.fl.trust.audit import hash_arrays

        t0 = time.monotonic()
        hash_in = hash_arrays(self.arrays)
        replies = self._collect_updates(round_no)
        rejected = self._validate_updates(replies)
        row = self._round_row(round_no, replies, rejected)
        accepted = [i for i, label in enumerate(replies.labels) if label not in rejected]
        self._require_quorum(round_no, row, [replies.labels[i] for i in accepted], t0=t0)
        ups, n_ex = [replies.updates[i] for i in accepted], [replies.n_ex[i] for i in accepted]
        args = (self.aggregator, self.arrays, ups, n_ex, self.opt_state)
        self.arrays, self.opt_state = server_update(*args)
        row["seconds"] = time.monotonic() - t0
        row["max_site_compute_s"] = max(
            (m.get("compute_s", 0.0) for m in replies.metrics), default=0.0
        )
        self._save_checkpoint(round_no)
        self.dir.append_round(row)
        self._audit_round(round_no, replies, row, accepted, hash_in=hash_in)
        logger.info(
            "round %d: %d/%d sites aggregated in %.1f s (C-index of previous global %.3f)",
            round_no,
            len(accepted),
            len(self.sites),
            row["seconds"],
            row["federated_c_index_prev_global"],
        )
        return row

    def _collect_updates(self, round_no: int) -> _Replies:
        """Send the global model to every accepted site; the replies in site-name order."""
        nodes = sorted(self.sites, key=self._name)
        got = self._send(records.TRAIN, round_no, nodes, arrays=self.arrays)
        order = sorted(got.ok, key=self._name)
        metrics = [dict(got.ok[n].content["metrics"]) for n in order]
        return _Replies(
            got=got,
            order=order,
            labels=[self._name(n) for n in order],
            updates=[records.from_array_record(got.ok[n].content["arrays"]) for n in order],
            metrics=metrics,
            n_ex=[int(m.get("num-examples", 0)) for m in metrics],
        )

    def _validate_updates(self, replies: _Replies) -> dict[str, str]:
        """Site name -> reason, for the updates :func:`validate_updates` rejects."""
        from pathfl.fl.trust.validation import reference_from_arrays, validate_updates

        check = validate_updates(
            replies.updates,
            reference_shapes_dtypes=reference_from_arrays(self.arrays),
            num_examples=replies.n_ex,
            global_arrays=self.arrays,
            norm_factor=float(self.cfg["reject_norm_factor"]) or None,
            max_norm_ratio=float(self.cfg["reject_norm_ratio"]) or None,
            labels=replies.labels,
        )
        return {replies.labels[i]: r for i, r in check.rejected.items()}

    def _round_row(
        self, round_no: int, replies: _Replies, rejected: dict[str, str]
    ) -> dict[str, Any]:
        """The round's line of ``rounds.jsonl`` (timing is added once the round is done)."""
        got = replies.got
        sites = {
            label: {
                **replies.metrics[i],
                "status": "rejected" if label in rejected else "aggregated",
                "bytes_up": int(got.ok[replies.order[i]].content["arrays"].count_bytes()),
            }
            for i, label in enumerate(replies.labels)
        }
        return {
            "round": round_no,
            "sites": sites,
            "failed": {self._name(n): r for n, r in got.failed.items()},
            "missing": [self._name(n) for n in got.missing],
            "rejected": rejected,
            # the val_* metrics of round r describe the global model of round r-1
            "federated_c_index_prev_global": self._fed_c(replies.metrics),
            "bytes_down_per_site": int(records.to_array_record(self.arrays).count_bytes()),
        }

    def _require_quorum(
        self, round_no: int, row: dict[str, Any], usable: list[str], *, t0: float
    ) -> None:
        """Fewer than ``min_sites`` usable updates: log the aborted round and stop the run."""
        if len(usable) >= int(self.cfg["min_sites"]):
            return
        self.dir.append_round({**row, "seconds": time.monotonic() - t0, "aborted": True})
        raise FederationError(
            f"round {round_no}: {len(usable)} usable update(s) ({usable}), "
            f"min_sites={self.cfg['min_sites']}; failed={row['failed']}, "
            f"no reply={row['missing']}, rejected={row['rejected']}"
        )

    def _save_checkpoint(self, round_no: int) -> None:
        """The global model after ``round_no`` and what a resumed run needs to continue."""
        self.dir.save_checkpoint(
            round_no=round_no,
            names=self.names,
            arrays=self.arrays,
            state={
                "sites": sorted(self.sites.values()),
                "run_id": self.run_id,
                "time_bins": self.time_bins,
                "feature_dim": self.feature_dim,
                "fingerprint": self.fingerprint,
                **self.checkpoint_state(),
                **save_state(self.dir.root, round_no, self.opt_state),
            },
        )

    def _audit_round(
        self,
        round_no: int,
        replies: _Replies,
        row: dict[str, Any],
        accepted: list[int],
        *,
        hash_in: str,
    ) -> None:
        from pathfl.fl.trust.audit import hash_arrays

        self.audit.append(
            "round",
            round=round_no,
            sites=[replies.labels[i] for i in accepted],
            model_in_sha256=hash_in,
            model_out_sha256=hash_arrays(self.arrays),
            n_examples=int(sum(replies.n_ex[i] for i in accepted)),
            rejected=row["rejected"],
            failed=row["failed"],
            missing=row["missing"],
            updates={
                lab: hash_arrays(u) for lab, u in zip(replies.labels, replies.updates, strict=True)
            },
            metrics={"federated_c_index_prev_global": row["federated_c_index_prev_global"]},
        )

    @staticmethod
    def _fed_c(metrics: list[dict[str, Any]]) -> float:
        counts = [
            (m["val_n_concordant"], m["val_n_comparable"], m.get("val_n_tied_risk", 0.0))
            for m in metrics
            if "val_n_comparable" in m
        ]
        return aggregate.federated_c_index(counts) if counts else float("nan")

    def final_evaluation(self, round_no: int) -> dict[str, Any]:
        nodes = sorted(self.sites, key=self._name)
        got = self._send(records.EVALUATE, round_no, nodes, arrays=self.arrays)
        per_site = {self._name(n): dict(r.content["metrics"]) for n, r in got.ok.items()}
        return {
            "federated_c_index": self._fed_c(list(per_site.values())),
            "per_site": per_site,
            "failed": {self._name(n): r for n, r in got.failed.items()},
            "missing": [self._name(n) for n in got.missing],
        }
