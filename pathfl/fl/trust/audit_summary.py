"""One row per audit log under a folder (server and site logs of a run): entries, whether
the hash chain verifies, rounds seen, event counts — for reports (``report.html``,
``report.md``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pathfl.fl.trust.audit import verify


def audit_summary(root: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Verify every ``*audit*.jsonl`` below ``root``; paths in the rows are relative to it."""
    root = Path(root)
    rows = []
    for p in sorted(root.rglob("*audit*.jsonl")):
        rep = verify(p)
        events: dict[str, int] = {}
        rounds = set()
        for line in p.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            events[e.get("event", "?")] = events.get(e.get("event", "?"), 0) + 1
            if e.get("round") is not None:
                rounds.add(e["round"])
        rows.append(
            {
                "log": str(p.relative_to(root)),
                "entries": str(rep.n_entries),
                "chain": "verified" if rep.ok else "BROKEN: " + "; ".join(rep.errors[:2]),
                "rounds": str(len(rounds)),
                "events": ", ".join(f"{k}×{v}" for k, v in sorted(events.items())),
            }
        )
    return rows
