"""The clinical table of a survival cohort: parsing and validation.

The clinical CSV (DESIGN.md) has one row per slide: ``patient_id, slide_id, time, event`` and
optional covariate columns (plus an optional ``site`` column that is never a covariate).
Validation is strict and complete: every problem of every row is collected as a
:class:`Problem` with its CSV line (header = line 1), so that the problems of the table and of
its features files (see :func:`pathfl.survival.data.load_cohort`) are reported together, in
line order, in one :class:`ClinicalError`; no row is ever dropped silently.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("patient_id", "slide_id", "time", "event")
RESERVED_COLUMNS = (*REQUIRED_COLUMNS, "site")
#: sort key of problems that belong to no single line (they are listed last)
_NO_LINE = 1 << 30


class ClinicalError(ValueError):
    """The clinical table (or its link to the features files) has problems; ``problems`` lists
    one human-readable line per bad row / slide."""

    def __init__(
        self, source: str, problems: Sequence[str], *, where: str = "in the clinical table"
    ) -> None:
        self.source = source
        self.problems = list(problems)
        head = f"{source}: {len(self.problems)} problem(s) {where}"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Problem:
    """One problem: ``where`` names the line(s) and ids (e.g. ``line 4 (patient_id=C,
    slide_id=c1)``), ``line`` orders the report (None: not tied to one line)."""

    line: int | None
    where: str
    message: str


def row_where(line: int, patient_id: str, slide_id: str) -> str:
    """How a problem names its row: ``line N (patient_id=P, slide_id=S)``."""
    return f"line {line} (patient_id={patient_id or '?'}, slide_id={slide_id or '?'})"


def format_problems(problems: Iterable[Problem]) -> list[str]:
    """One text line per place, in CSV line order: the problems of one row are joined with
    ``; `` so a row with three problems reads as one line naming all three."""
    merged: dict[tuple[int, str], list[str]] = {}
    for k, p in enumerate(problems):
        # problems that name no place stay separate lines (keyed by their position)
        key = (_NO_LINE if p.line is None else p.line, p.where or f"#{k}")
        merged.setdefault(key, []).append(p.message)
    out = []
    for (_, where), messages in sorted(merged.items(), key=lambda kv: kv[0][0]):
        text = "; ".join(messages)
        out.append(text if where.startswith("#") else f"{where}: {text}")
    return out


@dataclass(frozen=True)
class ClinicalRow:
    """One validated slide row. ``line`` is the 1-based CSV line (header = line 1)."""

    line: int
    patient_id: str
    slide_id: str
    time: float
    event: int
    site: str | None
    covariates: dict[str, float]


@dataclass(frozen=True)
class SlideRef:
    """A row that names a slide, valid or not (its features file is checked either way)."""

    line: int
    patient_id: str
    slide_id: str

    @property
    def where(self) -> str:
        return row_where(self.line, self.patient_id, self.slide_id)


@dataclass
class ClinicalTable:
    """A validated clinical table: slide rows grouped into patients. ``slide_refs``: every row
    of the file that names a slide, including rejected ones (empty when built by hand)."""

    path: str
    rows: list[ClinicalRow]
    covariate_columns: list[str]
    slide_refs: list[SlideRef] = field(default_factory=list)

    @property
    def patient_ids(self) -> list[str]:
        """Patients in order of first appearance."""
        return list(dict.fromkeys(r.patient_id for r in self.rows))

    def rows_of(self, patient_id: str) -> list[ClinicalRow]:
        return [r for r in self.rows if r.patient_id == patient_id]

    def __len__(self) -> int:
        return len(self.patient_ids)


def _parse_float(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    return header, rows


def _covariate_columns(src: str, header: list[str], covariates: Sequence[str] | None) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ClinicalError(
            src, [f"missing required column(s) {', '.join(missing)}; found {', '.join(header)}"]
        )
    cov_cols = (
        [c for c in header if c not in RESERVED_COLUMNS] if covariates is None else list(covariates)
    )
    unknown = [c for c in cov_cols if c not in header or c in RESERVED_COLUMNS]
    if unknown:
        raise ClinicalError(src, [f"covariate column(s) not usable: {', '.join(unknown)}"])
    return cov_cols


def _row_problems(r: dict[str, str], cov_cols: list[str]) -> tuple[list[str], dict[str, float]]:
    """What is wrong with the values of one row (ids aside), and its parsed covariates."""
    bad: list[str] = []
    t = _parse_float(r.get("time", ""))
    if r.get("time", "") == "":
        bad.append("missing time")
    elif t is None:
        bad.append(f"time {r['time']!r} is not a number")
    elif t <= 0:
        bad.append(f"time {t:g} must be > 0")
    ev_txt = r.get("event", "")
    if ev_txt == "":
        bad.append("missing event")
    elif _parse_float(ev_txt) not in (0.0, 1.0):
        bad.append(f"event {ev_txt!r} must be 0 (censored) or 1 (event)")
    cov: dict[str, float] = {}
    for c in cov_cols:
        v = _parse_float(r.get(c, ""))
        if v is None:
            bad.append(f"covariate {c}={r.get(c, '')!r} is missing or not a finite number")
        else:
            cov[c] = v
    return bad, cov


def _patient_problems(rows: list[ClinicalRow]) -> tuple[list[Problem], set[str]]:
    """A patient's slides must agree on the patient-level outcome; each disagreement names the
    lines and the value on each line. Returns the problems and the patients concerned."""
    by_patient: dict[str, list[ClinicalRow]] = {}
    for row in rows:
        by_patient.setdefault(row.patient_id, []).append(row)
    problems: list[Problem] = []
    bad: set[str] = set()
    for pid, prs in by_patient.items():
        where = (
            f"lines {', '.join(str(p.line) for p in prs)} (patient_id={pid}, slides "
            f"{', '.join(p.slide_id for p in prs)})"
        )
        for attr in ("time", "event", "site", "covariates"):
            if len({repr(getattr(p, attr)) for p in prs}) > 1:
                values = ", ".join(f"{getattr(p, attr)!r} on line {p.line}" for p in prs)
                problems.append(Problem(prs[0].line, where, f"rows disagree on {attr}: {values}"))
                bad.add(pid)
    return problems, bad


def parse_clinical(
    path: str | os.PathLike[str], *, covariates: Sequence[str] | None = None
) -> tuple[ClinicalTable, list[Problem]]:
    """Read a clinical CSV and return ``(table of the valid rows, problems)`` without raising
    for bad rows, so that callers can add the problems of the features files before reporting.
    Raises :class:`ClinicalError` only when the table cannot be read row by row (missing
    columns, unusable covariates, no rows), ``FileNotFoundError`` when it is absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clinical table not found")
    src = str(path)
    header, raw_rows = _read_csv(path)
    cov_cols = _covariate_columns(src, header, covariates)
    if not raw_rows:
        raise ClinicalError(src, ["table has no data rows"])
    problems: list[Problem] = []
    rows: list[ClinicalRow] = []
    refs: list[SlideRef] = []
    seen_slides: dict[str, int] = {}
    for i, r in enumerate(raw_rows):
        line = i + 2
        pid, sid = r.get("patient_id", ""), r.get("slide_id", "")
        bad: list[str] = [] if pid else ["empty patient_id"]
        if not sid:
            bad.append("empty slide_id")
        elif sid in seen_slides:
            bad.append(f"duplicate slide_id (also on line {seen_slides[sid]})")
        else:
            seen_slides[sid] = line
            refs.append(SlideRef(line, pid, sid))
        value_problems, cov = _row_problems(r, cov_cols)
        bad += value_problems
        where = row_where(line, pid, sid)
        problems += [Problem(line, where, b) for b in bad]
        if not bad:
            t, ev = float(r["time"]), int(float(r["event"]))
            rows.append(ClinicalRow(line, pid, sid, t, ev, r.get("site") or None, cov))
    patient_problems, bad_patients = _patient_problems(rows)
    problems += patient_problems
    rows = [r for r in rows if r.patient_id not in bad_patients]
    return ClinicalTable(src, rows, cov_cols, refs), problems


def load_clinical(
    path: str | os.PathLike[str], *, covariates: Sequence[str] | None = None
) -> ClinicalTable:
    """Read and validate a clinical CSV. ``covariates``: the columns to use (and validate as
    finite numbers) as covariates; default: every column that is not reserved — pass ``[]``
    when the table has free-text columns and no covariates are used. Raises
    :class:`ClinicalError` listing every bad row, or ``FileNotFoundError``."""
    table, problems = parse_clinical(path, covariates=covariates)
    if problems:
        raise ClinicalError(table.path, format_problems(problems))
    return table
