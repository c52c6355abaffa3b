"""The aggregator's run: site check-in, compatibility, federation-wide time bins, rounds of
FedAvg/FedProx with deadlines, update validation, checkpoints, audit, final model.

Called by the Flower ServerApp (:mod:`pathfl.fl.server_app`) with a Flower ``Grid``; the
numerical work is delegated to pure functions (:mod:`pathfl.fl.aggregate`,
:mod:`pathfl.fl.validation`, :mod:`pathfl.fl.compat`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from pathfl.fl import aggregate, records
from pathfl.fl.rundir import RunDir
from pathfl.fl.server_loop import Collected, FederationError, send_and_collect, wait_for_nodes

logger = logging.getLogger(__name__)


class FederatedRun:
    def __init__(self, grid: Any, cfg: dict[str, Any], run_dir: RunDir, *, run_id: str) -> None:
        from pathfl.fl.audit import AuditLog

        self.grid, self.cfg, self.dir, self.run_id = grid, cfg, run_dir, run_id
        self.audit = AuditLog(run_dir.audit, run_id=run_id)
        self.sites: dict[int, str] = {}  # node id -> site name (accepted sites only)
        self.time_bins: list[float] = []
        self.feature_dim = 0
        self.names: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.fingerprint: dict[str, Any] = {}
        self.aggregator = aggregate.create_aggregator(
            str(cfg.get("aggregation", "fedavg")),
            trim_fraction=float(cfg.get("trim_fraction", 0.2)),
        )

    # ------------------------------------------------------------------ helpers
    def _content(self, round_no: int, *, with_arrays: bool) -> Any:
        from flwr.app import RecordDict

        cfg = {**self.cfg, "round": round_no, "time_bins": self.time_bins, "run_id": self.run_id}
        d: dict[str, Any] = {"config": records.encode_config(cfg)}
        if with_arrays:
            d["arrays"] = records.to_array_record(self.arrays)
        return RecordDict(d)

    def _send(self, kind: str, round_no: int, nodes: list[int], *, with_arrays: bool) -> Collected:
        contents = {n: self._content(round_no, with_arrays=with_arrays) for n in nodes}
        timeout = float(self.cfg["round_timeout_s"])
        if kind == records.QUERY:
            timeout = min(timeout, float(self.cfg["connect_timeout_s"]))
        return send_and_collect(
            self.grid,
            contents,
            message_type=kind,
            group_id=str(round_no),
            timeout_s=timeout,
            poll_s=float(self.cfg["poll_interval_s"]),
        )

    def _name(self, node: int) -> str:
        return self.sites.get(node, f"node-{node}")

    # ------------------------------------------------------------------ setup
    def check_in(self) -> None:
        """Query every connected site, check fingerprints, fix the time bins."""
        from pathfl.fl.compat import check_compatibility

        min_sites = int(self.cfg["min_sites"])
        want = max(int(self.cfg["num_sites"]), min_sites)
        nodes = wait_for_nodes(
            self.grid, want=want, need=min_sites, timeout_s=float(self.cfg["connect_timeout_s"])
        )
        got = self._send(records.QUERY, 0, nodes, with_arrays=False)
        problems = {f"node-{n}": r for n, r in got.failed.items()}
        problems.update({f"node-{n}": "no reply to the check-in query" for n in got.missing})
        infos: dict[str, dict[str, Any]] = {}
        counts: dict[str, dict[str, Any]] = {}
        node_of: dict[str, int] = {}
        registered = self._registered_names()
        allowed = set(self.cfg.get("allowed_sites") or [])
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
                f"min_sites={min_sites}"
            )
        self.sites = {node_of[s]: s for s in sorted(result.accepted)}
        ref = infos[result.accepted[0]]
        self.feature_dim = int(ref["feature_dim"])
        self.fingerprint = dict(result.reference or ref)
        self.time_bins = self._fix_time_bins({s: counts[s] for s in result.accepted})

    def _registered_names(self) -> dict[int, str]:
        """node id -> the name its auth key was registered under (empty without site auth)."""
        try:
            return {
                int(n.node_id): str(getattr(n, "name", "") or "") for n in self.grid.get_nodes()
            }
        except Exception as e:  # an older SuperLink without node names: self-reported only
            logger.warning("could not read registered node names: %s", e)
            return {}

    def _fix_time_bins(self, counts: dict[str, dict[str, Any]]) -> list[float]:
        if self.cfg["loss"] != "nll":
            return []
        if self.cfg["time_bins"]:
            return [float(x) for x in self.cfg["time_bins"]]
        edges = aggregate.time_grid(
            float(self.cfg["time_grid_max"]), int(self.cfg["time_grid_cells"])
        )
        total = np.zeros(len(edges) - 1, dtype=np.int64)
        for site, c in counts.items():
            hist = np.asarray(c.get("time_hist", []), dtype=np.int64)
            if hist.shape != total.shape:
                raise FederationError(f"site {site!r} sent no/invalid event-time histogram")
            total += hist
        cuts = aggregate.cut_points_from_histogram(
            total, edges, n_bins=int(self.cfg["train"]["n_bins"])
        )
        logger.info("federation time-bin cut points: %s", np.round(cuts, 4).tolist())
        return [float(c) for c in cuts]

    def init_model(self) -> None:
        from pathfl.fl.records import state_to_arrays
        from pathfl.fl.site import train_config
        from pathfl.survival.train import build_model

        model = build_model(train_config(self.cfg), feature_dim=self.feature_dim)
        self.names, self.arrays = state_to_arrays(model.state_dict())

    # ------------------------------------------------------------------ rounds
    def run_round(self, round_no: int) -> dict[str, Any]:
        from pathfl.fl.audit import hash_arrays
        from pathfl.fl.validation import reference_from_arrays, validate_updates

        t0 = time.monotonic()
        nodes = sorted(self.sites, key=self._name)
        hash_in = hash_arrays(self.arrays)
        got = self._send(records.TRAIN, round_no, nodes, with_arrays=True)
        order = sorted(got.ok, key=self._name)
        labels = [self._name(n) for n in order]
        updates = [records.from_array_record(got.ok[n].content["arrays"]) for n in order]
        metrics = [dict(got.ok[n].content["metrics"]) for n in order]
        n_ex = [int(m.get("num-examples", 0)) for m in metrics]
        factor = float(self.cfg["reject_norm_factor"]) or None
        ratio = float(self.cfg["reject_norm_ratio"]) or None
        check = validate_updates(
            updates,
            reference_shapes_dtypes=reference_from_arrays(self.arrays),
            num_examples=n_ex,
            global_arrays=self.arrays,
            norm_factor=factor,
            max_norm_ratio=ratio,
            labels=labels,
        )
        accepted = list(check.accepted)
        rejected = {labels[i]: r for i, r in check.rejected.items()}
        failed = {self._name(n): r for n, r in got.failed.items()}
        missing = [self._name(n) for n in got.missing]
        row = {
            "round": round_no,
            "sites": {
                labels[i]: {
                    **metrics[i],
                    "status": "rejected" if i in check.rejected else "aggregated",
                    "bytes_up": int(got.ok[order[i]].content["arrays"].count_bytes()),
                }
                for i in range(len(order))
            },
            "failed": failed,
            "missing": missing,
            "rejected": rejected,
            # the val_* metrics of round r describe the global model of round r-1
            "federated_c_index_prev_global": self._fed_c(metrics),
            "bytes_down_per_site": int(records.to_array_record(self.arrays).count_bytes()),
        }
        if len(accepted) < int(self.cfg["min_sites"]):
            self.dir.append_round({**row, "seconds": time.monotonic() - t0, "aborted": True})
            raise FederationError(
                f"round {round_no}: {len(accepted)} usable update(s) "
                f"({[labels[i] for i in accepted]}), min_sites={self.cfg['min_sites']}; "
                f"failed={failed}, no reply={missing}, rejected={rejected}"
            )
        self.arrays = self.aggregator([updates[i] for i in accepted], [n_ex[i] for i in accepted])
        row["seconds"] = time.monotonic() - t0
        row["max_site_compute_s"] = max((m.get("compute_s", 0.0) for m in metrics), default=0.0)
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
            },
        )
        self.dir.append_round(row)
        self.audit.append(
            "round",
            round=round_no,
            sites=[labels[i] for i in accepted],
            model_in_sha256=hash_in,
            model_out_sha256=hash_arrays(self.arrays),
            n_examples=int(sum(n_ex[i] for i in accepted)),
            rejected=rejected,
            failed=failed,
            missing=missing,
            updates={labels[i]: hash_arrays(updates[i]) for i in range(len(order))},
            metrics={"federated_c_index_prev_global": row["federated_c_index_prev_global"]},
        )
        logger.info(
            "round %d: %d/%d sites aggregated in %.1f s (C-index of previous global %.3f)",
            round_no,
            len(accepted),
            len(nodes),
            row["seconds"],
            row["federated_c_index_prev_global"],
        )
        return row

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
        got = self._send(records.EVALUATE, round_no, nodes, with_arrays=True)
        per_site = {self._name(n): dict(r.content["metrics"]) for n, r in got.ok.items()}
        return {
            "federated_c_index": self._fed_c(list(per_site.values())),
            "per_site": per_site,
            "failed": {self._name(n): r for n, r in got.failed.items()},
            "missing": [self._name(n) for n in got.missing],
        }
