"""Text of the demo's tables, shared by the report (:mod:`pathfl.demo.report`,
:mod:`pathfl.demo.report_sections`) and the terminal (`pathfl demo`): number formatting,
Markdown tables and the rows of the C-index table."""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_LABELS = {"oracle": "oracle (true risk)"}


def model_label(name: str) -> str:
    """The table label of a model of the evaluation (``local_A`` → ``local-only A``)."""
    if name.startswith("local_"):
        return f"local-only {name[6:]}"
    return MODEL_LABELS.get(name, name)


def fmt(x: Any, nd: int = 3) -> str:
    """``x`` with ``nd`` decimals; an em dash for a missing or non-finite number."""
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def c_index_rows(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the C-index table of an evaluation summary (``work/evaluation.json``): every
    C with its 95% CI, patients, events and comparable pairs, or "—" with the reason
    (:func:`pathfl.survival.metrics.format_c_index`)."""
    from pathfl.survival.metrics import format_c_index

    models = evaluation.get("models", {})
    local = sorted(k for k in models if k.startswith("local_"))
    rows = []
    for name in ["oracle", "federated", "pooled", *local]:
        if name not in models:
            continue
        m = models[name]
        row = {
            "model": model_label(name),
            "C-index, all pairs": format_c_index(m),
            "within-site C": format_c_index(m["within_site"]),
        }
        row.update(
            {f"site {s}": format_c_index(v) for s, v in sorted(m["per_site_detail"].items())}
        )
        rows.append(row)
    if local:
        within = float(np.mean([models[k]["c_index_within_site"] for k in local]))
        rows.append(
            {
                "model": "local-only mean",
                "C-index, all pairs": fmt(evaluation["local_only_mean_c_index"]),
                "within-site C": fmt(within),
            }
        )
        rows.append(
            {
                "model": "local-only, own site",
                "within-site C": fmt(evaluation["local_own_site_c_index_within_site"]),
            }
        )
    return rows


def md_table(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    """A Markdown table of ``rows`` (columns: ``columns`` or every key, in first-seen order)."""
    if not rows:
        return "_(nothing to show)_\n"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"
