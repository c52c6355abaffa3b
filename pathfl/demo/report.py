"""The demo report: ``OUT/report.md`` + ``OUT/figures/*.png``. Written whatever happened, so
an incomplete run says which stage stopped it and shows only what was really computed."""

from __future__ import annotations

import datetime as dt
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathfl import __version__
from pathfl.demo import report_sections as sec
from pathfl.demo.evaluate import tile_fractions
from pathfl.io import write_text_atomic

if TYPE_CHECKING:
    from pathfl.demo.evaluate import Evaluation

log = logging.getLogger(__name__)


def attention_auc(evaluation: Evaluation, features_dir: Path) -> dict[str, float]:
    """Within-slide AUC of the federated model's attention for tiles that are mostly
    (≥ 50 %) high-risk phenotype in the ground-truth mask; mean over test slides having both
    kinds of tile. 0.5 = attention ignores the phenotype."""
    import cv2

    from pathfl.formats.coords_h5 import level0_scale
    from pathfl.formats.features_h5 import read_attrs

    aucs = []
    for b in evaluation.bags:
        att = evaluation.attention.get(b.patient_id)
        if att is None:
            continue
        for k, sid in enumerate(b.slide_ids):
            sel = b.tile_slide_index == k
            info = evaluation.truth[b.patient_id]["slides"][sid]
            mask = cv2.imread(str(info["mask"]), cv2.IMREAD_GRAYSCALE)
            mpp0, side_l0 = level0_scale(read_attrs(features_dir / f"{sid}.h5"))
            f_tiles = tile_fractions(mask, b.coords[sel], side_l0, mpp0, info["mask_um_per_px"])
            pos = f_tiles >= 0.5
            if 0 < pos.sum() < len(pos):
                aucs.append(_auc(att[sel], pos))
    return {"mean_auc": float(np.mean(aucs)) if aucs else float("nan"), "n_slides": len(aucs)}


def _auc(score: np.ndarray, pos: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _html_extras(state: Any) -> dict[str, Any]:
    """The fingerprints of the federated sites' features and the demo's options (and the
    federated config it ran), for ``report.html``."""
    import dataclasses
    import json

    extras: dict[str, Any] = {"config": {"demo": dataclasses.asdict(state.config)}}
    run = Path(state.fl_run) if state.fl_run is not None else None
    for name, key in (("sites.json", "fingerprints"), ("fl_config.json", "config")):
        f = run / name if run is not None else None
        if f is None or not f.is_file():
            continue
        data = json.loads(f.read_text())
        if key == "fingerprints":
            extras["fingerprints"] = data.get("fingerprints") or {}
        else:
            extras["config"]["federated"] = data.get("config", {})
    return extras


def write_report(state: Any) -> Path:
    """Write ``OUT/report.md`` (and its figures) from a :class:`pathfl.demo.pipeline.DemoState`
    whatever stage it reached; return its path."""
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
        auc = attention_auc(state.evaluation, Path(state.split["features_dir"]))
        parts.append(sec.heatmap_section(state, fig_dir, attention_auc=auc))
    parts.append(sec.qc_section(state, fig_dir))
    if state.fl_run is not None:
        parts.append(sec.federation_section(state, fig_dir))
    parts.append(sec.reproduce_section(state))
    path = c.out / "report.md"
    write_text_atomic(path, "\n".join(p for p in parts if p))
    from pathfl.report.sections import markdown_report

    try:  # the same report, self-contained (pictures embedded) for a browser
        markdown_report(path, title="pathfl demo report", **_html_extras(state))
    except Exception as e:  # report.md is written; the HTML is a convenience
        log.warning("report.html not written: %s", e)
    return path
