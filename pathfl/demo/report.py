"""The demo report: ``OUT/report.md`` + ``OUT/figures/*.png``. Written whatever happened, so
an incomplete run says which stage stopped it and shows only what was really computed."""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pathfl import __version__
from pathfl.io import write_text_atomic

log = logging.getLogger(__name__)

MODEL_LABELS = {"oracle": "oracle (true risk)"}


def model_label(name: str) -> str:
    if name.startswith("local_"):
        return f"local-only {name[6:]}"
    return MODEL_LABELS.get(name, name)


def _fmt(x: Any, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def c_index_rows(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the C-index table (also used for the terminal table)."""
    models = evaluation.get("models", {})
    local = sorted(k for k in models if k.startswith("local_"))
    rows = []
    for name in ["oracle", "federated", "pooled", *local]:
        if name not in models:
            continue
        m = models[name]
        lo, hi = m["ci95"]
        row = {
            "model": model_label(name),
            "C-index": _fmt(m["c_index"]),
            "95% CI": f"{_fmt(lo)}–{_fmt(hi)}",
            "within-site C": _fmt(m["c_index_within_site"]),
        }
        row.update({f"site {s}": _fmt(v) for s, v in sorted(m["per_site"].items())})
        rows.append(row)
    if local:
        within = float(np.mean([models[k]["c_index_within_site"] for k in local]))
        rows.append(
            {
                "model": "local-only mean",
                "C-index": _fmt(evaluation["local_only_mean_c_index"]),
                "within-site C": _fmt(within),
            }
        )
        rows.append(
            {
                "model": "local-only, own site",
                "within-site C": _fmt(evaluation["local_own_site_c_index_within_site"]),
            }
        )
    return rows


def _md_table(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(nothing to show)_\n"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def attention_auc(evaluation: dict[str, Any], features_dir: Path) -> dict[str, float]:
    """Within-slide AUC of the federated model's attention for tiles that are mostly
    (≥ 50 %) high-risk phenotype in the ground-truth mask; mean over test slides having both
    kinds of tile. 0.5 = attention ignores the phenotype."""
    import cv2
    import h5py

    aucs = []
    for b in evaluation.get("_bags", []):
        att = evaluation["_attention"].get(b.patient_id)
        if att is None:
            continue
        for k, sid in enumerate(b.slide_ids):
            sel = b.tile_slide_index == k
            info = evaluation["_truth"][b.patient_id]["slides"][sid]
            mask = cv2.imread(str(info["mask"]), cv2.IMREAD_GRAYSCALE)
            with h5py.File(features_dir / f"{sid}.h5", "r") as f:
                mpp0 = float(f.attrs["mpp_level0"])
                side_l0 = float(f.attrs["patch_size_level0"])
            f_tiles = tile_fractions(mask, b.coords[sel], side_l0, mpp0, info["mask_um_per_px"])
            pos = f_tiles >= 0.5
            if 0 < pos.sum() < len(pos):
                aucs.append(_auc(att[sel], pos))
    return {"mean_auc": float(np.mean(aucs)) if aucs else float("nan"), "n_slides": len(aucs)}


def tile_fractions(
    mask: np.ndarray, coords: np.ndarray, side_l0: float, mpp0: float, mask_um: float
) -> np.ndarray:
    """Fraction of each tile's area that is phenotype (mask value 255)."""
    f = mpp0 / mask_um
    out = np.zeros(len(coords))
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x * f), int(y * f)
        x1, y1 = max(x0 + 1, int((x + side_l0) * f)), max(y0 + 1, int((y + side_l0) * f))
        win = mask[y0:y1, x0:x1]
        out[i] = float((win == 255).mean()) if win.size else 0.0
    return out


def _auc(score: np.ndarray, pos: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def audit_summary(work_dir: Path) -> list[dict[str, str]]:
    """Verify every audit log the federation wrote (server and sites)."""
    rows = []
    try:
        from pathfl.fl.trust.audit import verify
    except ImportError:
        return [{"log": "—", "status": "audit module not available in this checkout"}]
    for p in sorted(work_dir.rglob("*audit*.jsonl")):
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
                "log": str(p.relative_to(work_dir)),
                "entries": str(rep.n_entries),
                "chain": "verified" if rep.ok else "BROKEN: " + "; ".join(rep.errors[:2]),
                "rounds": str(len(rounds)),
                "events": ", ".join(f"{k}×{v}" for k, v in sorted(events.items())),
            }
        )
    return rows


def write_report(state: Any) -> Path:
    from pathfl.demo import report_sections as sec

    c = state.config
    fig_dir = c.out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"# pathfl demo report\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · pathfl "
        f"{__version__} · {'tiny' if c.tiny else 'full'} cohort · seed {c.seed} · "
        f"{platform.node()} ({platform.processor() or platform.machine()})\n"
    ]
    parts.append(sec.pipeline_section(state))
    parts.append(sec.cohort_section(state, fig_dir))
    if state.evaluation:
        parts.append(sec.results_section(state, fig_dir))
        parts.append(sec.heatmap_section(state, fig_dir))
    parts.append(sec.qc_section(state, fig_dir))
    if state.fl_run is not None:
        parts.append(sec.federation_section(state, fig_dir))
    parts.append(sec.reproduce_section(state))
    path = c.out / "report.md"
    write_text_atomic(path, "\n".join(p for p in parts if p))
    return path
