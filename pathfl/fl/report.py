"""``RUN/report.html`` of a federated run directory: :func:`pathfl.report.sections.fl_report`
with the audit summary of the server's and the sites' logs found under the run dir."""

from __future__ import annotations

import os
from pathlib import Path


def write_run_report(run_dir: str | os.PathLike[str]) -> Path | None:
    """Write the report of ``run_dir``; None (and a logged warning) if it could not be."""
    from pathfl.fl.trust.audit_summary import audit_summary
    from pathfl.report.sections import write_report_safely

    try:
        rows = audit_summary(run_dir)
    except OSError as e:
        rows = [{"log": "—", "status": f"audit logs unreadable: {e}"}]
    return write_report_safely("fl", run_dir, audit_rows=rows)
