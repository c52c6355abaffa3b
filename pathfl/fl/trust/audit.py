"""Append-only, hash-chained audit log (JSON lines) kept by the server and by every site.

Each entry carries ``prev_hash`` (the previous entry's ``entry_hash``; 64 zeros for the first)
and ``entry_hash`` = SHA-256 of the entry's canonical JSON without ``entry_hash`` — or
HMAC-SHA-256 with a site secret when a key is given. A sidecar ``LOG.head`` (JSON: ``count``,
``head_hash``) is rewritten atomically after every append.

:func:`verify` detects: an edited entry (its hash no longer matches), a deleted or reordered
entry (the next ``prev_hash`` no longer matches), a torn last line, and truncation of the last
entries (fewer entries, or a different last hash, than the head file says). What it cannot
detect: someone with write access who rewrites the log *and* recomputes every hash and the
head file — unless the log is keyed (HMAC) and the key is kept from them, or the head hash is
also recorded somewhere they cannot write (e.g. printed into the other party's log).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import write_json_atomic

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
AUDIT_KEY_ENV = "PATHFL_AUDIT_KEY"
_CHAIN_FIELDS = ("prev_hash", "entry_hash")


def hash_arrays(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over the dtype, shape and C-order bytes of each array, in order. Equal models
    (same arrays in the same order) give equal hashes on every platform of equal endianness."""
    h = hashlib.sha256()
    h.update(f"n={len(arrays)};".encode())
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """SHA-256 over the relative path and content of every ``.py`` file of the installed pathfl
    package: two parties with equal code hashes ran the same pathfl source."""
    import pathfl

    root = Path(pathfl.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _canonical(entry: dict[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k != "entry_hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def entry_digest(entry: dict[str, Any], *, key: bytes | None = None) -> str:
    """The ``entry_hash`` an entry must carry (HMAC-SHA-256 when ``key`` is given)."""
    data = _canonical(entry)
    if key:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def key_from_env(var: str = AUDIT_KEY_ENV) -> bytes | None:
    value = os.environ.get(var)
    return value.encode() if value else None


def head_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".head")


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths so that every entry is plain JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        items = sorted(value) if isinstance(value, set) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    return value


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (a ``.lock`` file beside the log): several processes of one site
    (e.g. one ClientApp process per message) may append to the same log."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


class AuditLog:
    """An append-only audit log at ``path``. Entries are never rewritten; ``append`` adds one
    line (fsynced) and then updates the head file.

    ``key``: optional HMAC key (bytes); default the ``PATHFL_AUDIT_KEY`` environment variable.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, run_id: str | None = None, key: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.key = key if key is not None else key_from_env()

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry ``{seq, event, run_id, code_hash, time_utc, **fields, prev_hash,
        entry_hash}`` and return it. Typical fields: ``round``, ``sites``, ``model_in_sha256``,
        ``model_out_sha256`` / ``update_sha256``, ``n_examples``, ``metrics``, ``time_start``,
        ``time_end``, ``reason``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path):
            lines = _read_lines(self.path)
            prev_hash, seq = GENESIS_HASH, 0
            for line in reversed(lines):
                if line.strip():
                    try:
                        last = json.loads(line)
                        prev_hash, seq = last["entry_hash"], int(last.get("seq", 0)) + 1
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                        logger.warning(
                            "%s: last line is not a valid entry; chaining anyway", self.path
                        )
                        seq = len([ln for ln in lines if ln.strip()])
                    break
            # A torn last line (crash mid-write) stays as it is, so verify() reports it; the
            # new entry starts on its own line.
            prefix = "\n" if lines and not lines[-1].endswith("\n") else ""
            entry: dict[str, Any] = {
                "seq": seq,
                "event": event,
                "run_id": fields.pop("run_id", self.run_id),
                "code_hash": fields.pop("code_hash", None) or code_hash(),
                "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for k, v in fields.items():
                if k in _CHAIN_FIELDS or k in entry:
                    raise ValueError(f"audit field {k!r} is reserved")
                entry[k] = _jsonable(v)
            entry["prev_hash"] = prev_hash
            entry["entry_hash"] = entry_digest(entry, key=self.key)
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(prefix + line)
                fh.flush()
                os.fsync(fh.fileno())
            write_json_atomic(
                head_path(self.path),
                {"count": seq + 1, "head_hash": entry["entry_hash"], "keyed": bool(self.key)},
            )
        logger.debug("audit %s: %s round=%s", self.path, event, fields.get("round"))
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """All parseable entries (no verification; use :func:`verify` for that)."""
        out = []
        for line in _read_lines(self.path):
            with contextlib.suppress(json.JSONDecodeError):
                if line.strip():
                    out.append(json.loads(line))
        return out


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` is False when any error was found."""

    path: str
    ok: bool
    n_entries: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    head_count: int | None = None
    head_hash: str | None = None
    last_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify(
    path: str | os.PathLike[str], *, key: bytes | None = None, require_head: bool = True
) -> VerifyReport:
    """Check the hash chain of the log at ``path`` and compare it with its head file.

    ``key``: the HMAC key the log was written with (default: ``PATHFL_AUDIT_KEY``).
    ``require_head``: a missing head file is an error (otherwise a warning), because without it
    truncation of the last entries cannot be detected."""
    path = Path(path)
    key = key if key is not None else key_from_env()
    if not path.is_file():
        return VerifyReport(str(path), ok=False, n_entries=0, errors=[f"{path}: no such log"])
    errors: list[str] = []
    warnings: list[str] = []
    prev = GENESIS_HASH
    n = 0
    lines = _read_lines(path)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.endswith("\n"):
            errors.append(f"line {lineno}: torn last line (incomplete write or truncation)")
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {lineno}: not valid JSON ({e.msg})")
            prev = None  # type: ignore[assignment]
            n += 1
            continue
        if not isinstance(entry, dict) or "entry_hash" not in entry:
            errors.append(f"line {lineno}: not an audit entry (no entry_hash)")
            n += 1
            continue
        if entry.get("seq") != n:
            errors.append(
                f"line {lineno}: seq={entry.get('seq')!r}, expected {n} (entry deleted "
                "or reordered)"
            )
        if prev is not None and entry.get("prev_hash") != prev:
            errors.append(
                f"line {lineno}: prev_hash does not match the previous entry "
                "(an entry before it was deleted, edited or reordered)"
            )
        if entry_digest(entry, key=key) != entry["entry_hash"]:
            hint = "" if key else " (or the log is keyed and no key was given)"
            errors.append(f"line {lineno}: entry_hash mismatch — entry was edited{hint}")
        prev = entry["entry_hash"]
        n += 1
    report = VerifyReport(str(path), ok=False, n_entries=n, last_hash=prev)
    hp = head_path(path)
    if not hp.is_file():
        msg = f"{hp.name} missing: truncation of the last entries cannot be checked"
        (errors if require_head else warnings).append(msg)
    else:
        try:
            head = json.loads(hp.read_text())
            report.head_count, report.head_hash = int(head["count"]), str(head["head_hash"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            errors.append(f"{hp.name}: unreadable head file ({e})")
        else:
            if report.head_count > n:
                errors.append(
                    f"log truncated: head file records {report.head_count} entries, log has {n}"
                )
            elif report.head_count < n:
                warnings.append(
                    f"head file records {report.head_count} entries, log has {n}: the last "
                    "append did not finish updating the head (crash?) or entries were appended "
                    "by another writer"
                )
            else:
                if report.head_hash != prev:
                    errors.append(
                        "last entry's hash differs from the head file (last entry replaced)"
                    )
    report.errors, report.warnings = errors, warnings
    report.ok = not errors
    return report


def cross_check(
    server_log: str | os.PathLike[str], site_logs: dict[str, str | os.PathLike[str]]
) -> list[str]:
    """Compare a server log with site logs of the same run: for every round a site trained,
    the global model it received (``model_in_sha256``) must be the one the server says it sent
    that round, and the update it sent (``update_sha256``) must be the one the server recorded
    receiving from it (``updates[site]``, when the server logs per-site hashes). Sites the
    server lists as aggregated must have a ``train`` entry for that round. Returns the
    discrepancies (empty = consistent). Chain integrity is :func:`verify`'s job."""
    problems: list[str] = []
    server = [e for e in AuditLog(server_log).entries() if e.get("event") == "round"]
    by_round = {int(e["round"]): e for e in server if e.get("round") is not None}
    for site, path in sorted(site_logs.items()):
        # a site's log holds every run it took part in: match on (run_id, round)
        trained = {
            (e.get("run_id"), int(e["round"])): e
            for e in AuditLog(path).entries()
            if e.get("event") == "train" and e.get("round") is not None
        }
        for rnd, s_entry in sorted(by_round.items()):
            if site not in (s_entry.get("sites") or []):
                continue
            t = trained.get((s_entry.get("run_id"), rnd))
            if t is None:
                problems.append(
                    f"round {rnd}: server aggregated site {site!r}, whose log has no "
                    "train entry for that round"
                )
                continue
            if t.get("model_in_sha256") != s_entry.get("model_in_sha256"):
                problems.append(
                    f"round {rnd}: site {site!r} received a different global model "
                    "than the server logged sending"
                )
            sent = (s_entry.get("updates") or {}).get(site)
            if sent is not None and sent != t.get("update_sha256"):
                problems.append(
                    f"round {rnd}: the server aggregated an update from {site!r} "
                    "that differs from the one the site logged sending"
                )
    return problems
