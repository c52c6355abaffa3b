"""Follow a federated run's progress from its run directory: each new line of
``rounds.jsonl`` (written atomically by the ServerApp after every round) becomes a
:class:`RoundInfo` handed to a callback — what ``pathfl fl simulate`` / ``fl run`` show."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathfl.fl.rundir import RunDir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundInfo:
    """One finished round: ``answered`` of ``n_sites`` sites were aggregated in ``seconds``;
    ``federated_c`` = within-site C of the global model the round started from (NaN when
    unknown); ``total`` = the run's rounds (0 when unknown)."""

    round: int
    total: int
    answered: int
    n_sites: int
    seconds: float
    federated_c: float
    problems: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, total: int = 0) -> RoundInfo:
        sites = row.get("sites") or {}
        missing = list(row.get("missing") or [])
        failed = {**(row.get("failed") or {}), **(row.get("rejected") or {})}
        names = set(sites) | set(missing) | set(failed)
        c = row.get("federated_c_index_prev_global")
        return cls(
            round=int(row.get("round", 0)),
            total=int(total),
            answered=sum(1 for s in sites.values() if s.get("status") == "aggregated"),
            n_sites=len(names),
            seconds=float(row.get("seconds", math.nan)),
            federated_c=math.nan if c is None else float(c),
            problems=tuple([*(f"{m}: no reply" for m in missing), *map(str, failed)]),
        )

    def line(self) -> str:
        """``round 2/3: 3/3 sites answered in 6.2 s; federated C 0.733 (model entering the
        round)``."""
        of = f"/{self.total}" if self.total else ""
        c = "—" if math.isnan(self.federated_c) else f"{self.federated_c:.3f}"
        text = (
            f"round {self.round}{of}: {self.answered}/{self.n_sites} sites answered in "
            f"{self.seconds:.1f} s; federated C {c} (model entering the round)"
        )
        return text + (f"; {', '.join(self.problems)}" if self.problems else "")


class RoundWatcher:
    """``poll()`` calls ``callback`` once per round newly written to ``run_dir``'s
    rounds.jsonl since the last poll (rounds already there at start are skipped)."""

    def __init__(self, run_dir: str | Path, callback: Callable[[RoundInfo], None]) -> None:
        self.rd = RunDir(run_dir)
        self.callback = callback
        self._stamp: tuple[int, int] | None = None
        self._seen = max((int(r["round"]) for r in self._rows()), default=0)

    def _rows(self) -> list[dict[str, Any]]:
        try:
            return self.rd.read_rounds()
        except (OSError, ValueError):  # being replaced right now: read it next time
            return []

    def _total(self) -> int:
        try:
            return int(json.loads(self.rd.config.read_text())["config"]["rounds"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def poll(self) -> None:
        """Report the rounds written since the last call."""
        try:
            st = self.rd.rounds_log.stat()
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        total, rows = self._total(), self._rows()
        newest = max((int(r.get("round", 0)) for r in rows), default=0)
        if rows and newest < self._seen:  # a new run rewrote an older run's log
            self._seen = newest - 1
        for row in rows:
            if int(row.get("round", 0)) > self._seen:
                self._seen = int(row["round"])
                try:
                    self.callback(RoundInfo.from_row(row, total=total))
                except Exception as e:  # showing progress must not stop the run
                    logger.debug("round progress callback failed: %s", e)
