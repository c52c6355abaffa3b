"""The federated run directory on the aggregator host, and its crash-safe checkpoint.

Layout (``model.pt``/``config.json``/``metrics.json`` as written by
:func:`pathfl.survival.run.save_run`, so ``pathfl predict``/``heatmap`` read it like any run)::

    RUN/fl_config.json          effective federated config (+ how to reach the SuperLink)
    RUN/status.json             state: running | completed | failed (+ message)
    RUN/sites.json              accepted/excluded sites and their fingerprints
    RUN/rounds.jsonl            one line per round: per-site metrics, federated C-index, timing
    RUN/rounds/global_NNN.npz   global model after round NNN
    RUN/checkpoint/state.json   last completed round, its global model file, time bins, sites
    RUN/audit.jsonl             server audit log (hash chain, see pathfl.fl.trust.audit)
    RUN/model.pt config.json metrics.json   final model (after the last round)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.config import ConfigError
from pathfl.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)


class RunDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # paths
    @property
    def config(self) -> Path:
        return self.root / "fl_config.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def rounds_log(self) -> Path:
        return self.root / "rounds.jsonl"

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def checkpoint_state(self) -> Path:
        return self.root / "checkpoint" / "state.json"

    def round_arrays(self, round_no: int) -> Path:
        return self.root / "rounds" / f"global_{round_no:03d}.npz"

    # writers
    def write_status(self, state: str, **extra: Any) -> None:
        write_json_atomic(self.status, {"state": state, "time": time.time(), **extra})

    def read_status(self) -> dict[str, Any]:
        return json.loads(self.status.read_text()) if self.status.exists() else {}

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.root / name, obj)

    def save_arrays(self, path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **{f"a{i:04d}": a for i, a in enumerate(arrays)}, __names__=np.array(names))

    @staticmethod
    def load_arrays(path: Path) -> tuple[list[str], list[np.ndarray]]:
        with np.load(path, allow_pickle=False) as z:
            keys = sorted(k for k in z.files if k.startswith("a"))
            return [str(n) for n in z["__names__"]], [z[k] for k in keys]

    def append_round(self, row: dict[str, Any]) -> None:
        """Rewrite rounds.jsonl atomically, dropping rows of this round or later (a resumed
        run repeats the round that was interrupted)."""
        rows = [r for r in self.read_rounds() if int(r["round"]) < int(row["round"])]
        rows.append(row)
        text = "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in rows)
        with atomic_path(self.rounds_log) as tmp:
            tmp.write_text(text)

    def read_rounds(self) -> list[dict[str, Any]]:
        if not self.rounds_log.exists():
            return []
        return [json.loads(line) for line in self.rounds_log.read_text().splitlines() if line]

    def save_checkpoint(
        self, *, round_no: int, names: list[str], arrays: list[np.ndarray], state: dict[str, Any]
    ) -> None:
        """Write the round's global model, then the state file naming it (both atomic): a
        crash between the two leaves the previous, consistent checkpoint."""
        path = self.round_arrays(round_no)
        self.save_arrays(path, names, arrays)
        rel = str(path.relative_to(self.root))
        write_json_atomic(self.checkpoint_state, {**state, "round": round_no, "arrays": rel})

    def load_checkpoint(self) -> tuple[dict[str, Any], list[str], list[np.ndarray]] | None:
        if not self.checkpoint_state.exists():
            return None
        state = json.loads(self.checkpoint_state.read_text())
        names, arrays = self.load_arrays(self.root / state["arrays"])
        return state, names, arrays


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


@dataclass
class Submission:
    """A run as ``pathfl fl run`` submits it, saved as ``RUN/fl_config.json``: the effective
    config and how to reach the SuperLink (``root_cert``: the federation's CA certificate)."""

    config: dict[str, Any]
    server: str | None = None
    root_cert: Path | None = None
    insecure: bool = False

    def check(self) -> None:
        """A server address, and a CA certificate unless ``insecure`` (:class:`ConfigError`)."""
        if not self.server:
            raise ConfigError("--server HOST:PORT is required")
        if not self.insecure and (self.root_cert is None or not self.root_cert.is_file()):
            raise ConfigError("--root-cert CA.crt is required unless --insecure")

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``RUN/fl_config.json`` (atomically)."""
        root_cert = None if self.insecure or self.root_cert is None else self.root_cert
        write_json_atomic(
            RunDir(run_dir).config,
            {
                "config": self.config,
                "server": self.server,
                "insecure": self.insecure,
                "root_cert": None if root_cert is None else str(root_cert.resolve()),
            },
        )


def resume_submission(
    run_dir: str | os.PathLike[str],
    *,
    server: str | None = None,
    root_cert: Path | None = None,
    insecure: bool = False,
) -> Submission:
    """The submission saved in ``run_dir`` (its config unchanged), with ``server``,
    ``root_cert`` and ``insecure`` taken from the command line where given, else as saved.
    No ``fl_config.json`` there → :class:`ConfigError`."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{path}: not found — is {run_dir} a federated run dir?")
    saved = json.loads(path.read_text())
    if root_cert is None and saved.get("root_cert"):
        root_cert = Path(saved["root_cert"])
    return Submission(
        config=saved["config"],
        server=server or saved.get("server"),
        root_cert=root_cert,
        insecure=insecure or bool(saved.get("insecure")),
    )
