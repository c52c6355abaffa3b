"""Flower glue of the aggregator: wait for sites, send one request per site and collect the
replies with a deadline (never an unbounded wait), faster than ``Grid.send_and_receive``'s
fixed 3-second polling."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """The run cannot continue (too few sites, incompatible sites, all replies rejected)."""


@dataclass
class Collected:
    """Replies of one request wave: ``ok`` node -> message, ``failed`` node -> reason
    (an error reply, e.g. a policy refusal or an exception in the ClientApp), ``missing``
    nodes that did not answer before the deadline."""

    ok: dict[int, Any] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    seconds: float = 0.0


def registered_names(grid: Any) -> dict[int, str]:
    """node id -> the name its auth key was registered under (empty without site auth)."""
    try:
        return {int(n.node_id): str(getattr(n, "name", "") or "") for n in grid.get_nodes()}
    except Exception as e:  # an older SuperLink without node names: self-reported only
        logger.warning("could not read registered node names: %s", e)
        return {}


def wait_for_nodes(
    grid: Any, *, want: int, need: int, timeout_s: float, poll_s: float = 0.5
) -> list[int]:
    """Wait until ``want`` nodes are connected or ``timeout_s`` passed; fail when fewer than
    ``need`` are there at the end."""
    deadline = time.monotonic() + timeout_s
    nodes: list[int] = []
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    if len(nodes) < need:
        raise FederationError(
            f"only {len(nodes)} site(s) connected after {timeout_s:.0f} s, "
            f"min_sites={need}: start the missing sites (`pathfl fl site ...`) and retry"
        )
    logger.info("%d site(s) connected: %s", len(nodes), nodes)
    return nodes


def send_and_collect(
    grid: Any,
    contents: dict[int, Any],
    *,
    message_type: str,
    group_id: str,
    timeout_s: float,
    poll_s: float = 0.2,
) -> Collected:
    """Send ``contents[node]`` (a RecordDict) to every node and pull replies every ``poll_s``
    until all answered or ``timeout_s`` passed."""
    from flwr.app import Message

    t0 = time.monotonic()
    messages = [
        Message(
            content,
            dst_node_id=node,
            message_type=message_type,
            group_id=group_id,
            ttl=max(timeout_s, 60.0) + 60.0,
        )
        for node, content in contents.items()
    ]
    ids = list(grid.push_messages(messages))
    pending: dict[str, int] = {}
    out = Collected()
    for node, mid in zip(contents, ids, strict=True):
        if mid:
            pending[mid] = node
        else:
            out.failed[node] = "message could not be pushed to the SuperLink"
    deadline = t0 + timeout_s
    while pending and time.monotonic() < deadline:
        for reply in _pull(grid, pending):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if reply.has_error():
                out.failed[node] = f"code {reply.error.code}: {reply.error.reason}"
            else:
                out.ok[node] = reply
        if pending:
            time.sleep(poll_s)
    out.missing = sorted(pending.values())
    out.seconds = time.monotonic() - t0
    if out.missing:
        logger.warning(
            "%s round %s: no reply from node(s) %s within %.0f s",
            message_type,
            group_id,
            out.missing,
            timeout_s,
        )
    return out


def _pull(grid: Any, pending: dict[str, int]) -> Iterable[Any]:
    try:
        return list(grid.pull_messages(list(pending)))
    except Exception as e:  # a transient SuperLink hiccup must not kill the round
        logger.warning("pulling replies failed (%s); retrying", e)
        return []
