"""An in-process transport for quality benchmarks and research: the same federation as
``pathfl fl simulate`` without network or processes.

:class:`InProcessGrid` implements the part of Flower's ``Grid`` that pathfl's server side uses
(:mod:`pathfl.fl.server_loop`: ``get_node_ids``, ``get_nodes``, ``create_message``,
``push_messages``, ``pull_messages``). Pushing a message delivers it at once, in this process,
to pathfl's real ClientApp (:data:`pathfl.fl.flower.client_app.app`) with a per-site Flower
``Context`` whose node config is what ``fl simulate`` gives each SuperNode (site name, features,
clinical table, audit log, policy). Each message and each reply is serialised to Flower's
protobuf wire format and parsed back, so the ClientApp's policy check, its
:func:`pathfl.fl.trust.records.check_reply` and the coordinator see exactly what would cross
the network; an exception in the ClientApp becomes the error reply Flower's ``flwr-clientapp``
sends. :func:`run_inprocess` drives :func:`pathfl.fl.flower.server_app.run_federation` (the
ServerApp's body) against it.

Sequential and deterministic: sites answer one after the other in node order; no threads, no
sockets, no TLS or site authentication (there is no network to protect). Each site keeps its
data loaded between messages, as the long-running site worker does. Use it for benchmarks
(``scripts/bench_unseen_site.py``, ``scripts/bench_learning.py``); deployments and ``pathfl fl
simulate`` use real Flower processes.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict

from pathfl.fl.site import SiteSpec

logger = logging.getLogger(__name__)

_ids = itertools.count(1001)  # node ids: unique within this process, in start order


@dataclass(frozen=True)
class NodeInfo:
    """What ``Grid.get_nodes`` reports: the node id and the name it was registered under."""

    node_id: int
    name: str


def over_the_wire(msg: Message) -> Message:
    """``msg`` serialised to Flower's protobuf message and parsed back (what a SuperLink and
    a SuperNode exchange)."""
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611

    wire = message_to_proto(msg).SerializeToString()
    proto = ProtoMessage()
    proto.ParseFromString(wire)
    return message_from_proto(proto)


class InProcessGrid:
    """The subset of ``flwr.serverapp.Grid`` pathfl uses; every site answers in this process.

    ``app`` is the ClientApp (default pathfl's); ``work`` holds each site's state folder
    (``work/sites/<name>/audit.jsonl``, as ``fl simulate``)."""

    def __init__(self, specs: list[SiteSpec], work: Path, *, run_id: int, app: Any = None) -> None:
        from pathfl.fl.flower import client_app
        from pathfl.fl.flower.federation import site_node_config
        from pathfl.fl.site import SiteCache

        self.app = app if app is not None else client_app.app
        self.run_id = run_id
        self.contexts: dict[int, Context] = {}
        self.names: dict[int, str] = {}
        for spec in specs:
            node = next(_ids)
            sdir = Path(work) / "sites" / spec.name
            sdir.mkdir(parents=True, exist_ok=True)
            self.contexts[node] = Context(
                run_id=run_id,
                node_id=node,
                node_config=site_node_config(spec, sdir),
                state=RecordDict(),
                run_config={},
            )
            self.names[node] = spec.name
            client_app.LOCAL_CACHES[node] = SiteCache()  # data stays loaded between rounds
        self._replies: dict[str, Message] = {}
        self.delivered = 0  # messages delivered so far

    # ------------------------------------------------------------------ Grid API
    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node, name) for node, name in self.names.items()]

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its site now; returns the message ids ("" for a message
        to an unknown node, as a SuperLink refuses it)."""
        ids: list[str] = []
        for msg in messages:
            md = msg.metadata
            md.__dict__["_message_id"] = msg.object_id  # as the SuperLink sets it
            if md.dst_node_id not in self.contexts:
                ids.append("")
                continue
            reply = self._deliver(over_the_wire(msg))
            reply.metadata.__dict__["_message_id"] = reply.object_id  # as the SuperNode does
            self._replies[md.message_id] = over_the_wire(reply)
            ids.append(md.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    # ------------------------------------------------------------------ sites
    def _deliver(self, msg: Message) -> Message:
        """The ClientApp's reply, or the error reply ``flwr-clientapp`` sends when it raises."""
        from flwr.common.constant import ErrorCode

        self.delivered += 1
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            return self.app(message=msg, context=context)
        except Exception as ex:  # what flwr-clientapp does with an exception of the app
            logger.info("site %s: %s", self.names[msg.metadata.dst_node_id], ex)
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )

    def close(self) -> None:
        """Drop the sites' loaded data."""
        from pathfl.fl.flower import client_app

        for node in self.contexts:
            client_app.LOCAL_CACHES.pop(node, None)

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _server_identity(run_id: int) -> Iterator[None]:
    """The task identity Flower gives a ServerApp process (messages created on the server
    carry its run id and the SuperLink's node id), restored afterwards."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    keep = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = keep


def run_inprocess(
    specs: list[SiteSpec], cfg: dict[str, Any], out: Path, *, work: Path
) -> tuple[str, dict[str, Any]]:
    """One federated run of ``cfg`` over ``specs`` into run dir ``out``, in this process.
    Returns ``(run id, result)`` with ``result`` shaped like
    :func:`pathfl.fl.flower.federation.follow_run`'s (``state`` from status.json, ...)."""
    from pathfl.fl.flower.lifetime import STOP_REQUESTS
    from pathfl.fl.flower.server_app import run_federation
    from pathfl.fl.rundir import RunDir

    run_id = secrets.randbits(63)  # like Flower's: a new id per run (audit, DP ledger)
    cfg = json.loads(json.dumps(cfg))  # as the ServerApp reads it from the run config
    run_dir = RunDir(out)
    with _server_identity(run_id), InProcessGrid(specs, work, run_id=run_id) as grid:
        try:
            run_federation(grid, cfg, run_dir, run_id=str(run_id), resume=False)
        except STOP_REQUESTS:
            run_dir.write_status("interrupted", run_id=str(run_id))
            raise
        except Exception as e:  # status.json says failed (run_federation wrote it)
            logger.debug("in-process run %d failed: %s", run_id, e)
        logger.info("in-process run %d: %d message(s) delivered", run_id, grid.delivered)
    state = run_dir.read_status()
    return str(run_id), {"flower_status": "in-process", "run_id": run_id, **state}
