"""pathfl's Flower ClientApp: a thin adapter from Flower messages to :mod:`pathfl.fl.site`.

Handlers: ``query`` (site name, feature fingerprint, patient/event counts, optional event-time
histogram, moments of the training bags for the federation's scaler), ``train`` (evaluate the
received global model, train it locally, return weights), ``evaluate`` (metrics of the final
global model; for Cox runs also the Breslow sums of its training part, see
:mod:`pathfl.fl.fed_breslow`), ``query.linear_cox`` (one Newton step of the federated
linear-cox: derivatives of the site's Cox partial likelihood at the received β, validation
pair counts). Each
train/evaluate/linear_cox request is checked against the site's policy file first (refusal =
an error reply plus a logged, audited reason); every reply passes
:func:`pathfl.fl.trust.records.check_reply` before it leaves; the site's own audit log gets
one entry per request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pathfl.fl import site as site_mod
from pathfl.fl.trust import records

logger = logging.getLogger(__name__)

app = ClientApp()

# the in-process transport (pathfl.fl.flower.inprocess): node id -> the site's loaded data,
# kept between messages as the long-running site worker keeps it
LOCAL_CACHES: dict[int, site_mod.SiteCache] = {}


class PolicyRefusalError(RuntimeError):
    """The site's policy forbids this run; the message lists every violated rule."""


def _audit(context: Context, cfg: dict[str, Any], event: str, **fields: Any) -> None:
    from pathfl.fl.trust.audit import AuditLog

    path = site_mod.default_audit_path(context.node_config)
    AuditLog(path, run_id=str(cfg.get("run_id", context.run_id))).append(
        event, site=str(context.node_config.get(site_mod.NODE_SITE)), **fields
    )


def _check_policy(context: Context, cfg: dict[str, Any], round_no: int) -> None:
    from pathfl.fl.fl_config import policy_view
    from pathfl.fl.trust.policy import SitePolicy

    path = str(context.node_config.get(site_mod.NODE_POLICY, "") or "")
    if not path:
        return
    violations = SitePolicy.load(path).check(policy_view(cfg))
    if violations:
        _audit(context, cfg, "refused", round=round_no, reason=violations)
        raise PolicyRefusalError(
            f"site {context.node_config.get(site_mod.NODE_SITE)!r} refuses the run: "
            + "; ".join(violations)
        )


def _reply(msg: Message, kind: str, content: RecordDict) -> Message:
    records.check_reply(kind, content)
    return Message(content, reply_to=msg)


def _compute(
    kind: str, context: Context, cfg: dict[str, Any], arrays: list | None
) -> dict[str, Any]:
    """Ask the site's long-running worker (node config ``worker``); compute here when there
    is none or it cannot be reached."""
    from pathfl.fl.flower.lifetime import watch_parent

    watch_parent()  # the pathfl command that started the SuperNode is gone → stop
    node_config = dict(context.node_config)
    sock = str(node_config.get("worker", "") or "")
    if sock:
        from pathfl.fl.flower.worker import WorkerUnavailableError, call

        try:
            return call(sock, kind, node_config, cfg, arrays)
        except WorkerUnavailableError as e:
            logger.warning("%s; computing in the ClientApp process", e)
    return site_mod.handle(
        kind, node_config, cfg, arrays, cache=LOCAL_CACHES.get(int(context.node_id))
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = records.decode_config(msg.content["config"])
    result = _compute(records.QUERY, context, cfg, None)
    info, counts = result["info"], result["counts"]
    moments = result.get("moments") or {}
    _audit(
        context,
        cfg,
        "fingerprint",
        fingerprint=info,
        n_examples=counts["num-examples"],
        moments_sent=sorted(moments),
    )
    content = RecordDict({"site": ConfigRecord(info), "counts": MetricRecord(counts)})
    if moments:
        content["moments"] = records.to_named_array_record(moments)
    return _reply(msg, records.QUERY, content)


def _accept_round(msg: Message, context: Context) -> tuple[dict[str, Any], int, list[Any]]:
    """Decode a train/evaluate message and check it against the site policy (raises and
    logs the refusal when the run breaks it)."""
    cfg = records.decode_config(msg.content["config"])
    round_no = int(cfg["round"])
    _check_policy(context, cfg, round_no)
    return cfg, round_no, records.from_array_record(msg.content["arrays"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    from pathfl.fl.trust.audit import hash_arrays

    t0 = time.perf_counter()
    cfg, round_no, arrays_in = _accept_round(msg, context)
    result = _compute(records.TRAIN, context, cfg, arrays_in)
    arrays_out, metrics = result["arrays"], result["metrics"]
    metrics["compute_s"] = time.perf_counter() - t0
    content = RecordDict(
        {"arrays": records.to_array_record(arrays_out), "metrics": MetricRecord(metrics)}
    )
    reply = _reply(msg, records.TRAIN, content)
    _audit(
        context,
        cfg,
        "train",
        round=round_no,
        model_in_sha256=hash_arrays(arrays_in),
        update_sha256=hash_arrays(arrays_out),
        n_examples=int(metrics["num-examples"]),
        metrics=metrics,
    )
    return reply


@app.query("linear_cox")
def linear_cox(msg: Message, context: Context) -> Message:
    """One Newton step of the federated linear-cox (checked against the site policy)."""
    t0 = time.perf_counter()
    cfg, round_no, beta = _accept_round(msg, context)
    result = _compute(records.LINEAR_COX, context, cfg, beta)
    metrics = result["metrics"]
    metrics["compute_s"] = time.perf_counter() - t0
    content = RecordDict(
        {
            "derivatives": records.to_named_array_record(result["derivatives"]),
            "metrics": MetricRecord(metrics),
        }
    )
    reply = _reply(msg, records.LINEAR_COX, content)
    _audit(context, cfg, "linear_cox", iteration=round_no, n_examples=int(metrics["num-examples"]))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from pathfl.fl.trust.audit import hash_arrays

    t0 = time.perf_counter()
    cfg, round_no, arrays_in = _accept_round(msg, context)
    result = _compute(records.EVALUATE, context, cfg, arrays_in)
    metrics = result["metrics"]
    metrics["compute_s"] = time.perf_counter() - t0
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if result.get("breslow"):  # Cox runs: the Breslow sums on the training part (fed_breslow)
        content["breslow"] = records.to_named_array_record(result["breslow"])
    reply = _reply(msg, records.EVALUATE, content)
    _audit(
        context,
        cfg,
        "evaluate",
        round=round_no,
        model_in_sha256=hash_arrays(arrays_in),
        n_examples=int(metrics["num-examples"]),
        metrics=metrics,
        breslow_sums_sent="breslow" in content,
    )
    return reply
