"""Sections of ``report.md`` (see :mod:`pathfl.demo.report`). Each returns Markdown and
writes the pictures it shows under ``OUT/figures``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathfl.demo import figures
from pathfl.demo.evaluate import tile_fractions
from pathfl.demo.tables import c_index_rows, fmt, md_table

if TYPE_CHECKING:
    from pathfl.demo.evaluate import Evaluation

log = logging.getLogger(__name__)


def _rel(state: Any, p: Path) -> str:
    return str(Path(p).relative_to(state.config.out))


def pipeline_section(state: Any) -> str:
    rows = [
        {
            "stage": s.name,
            "status": s.status,
            "wall s": f"{s.seconds:.1f}",
            "CPU s": f"{getattr(s, 'cpu_s', 0.0):.1f}",
            "load": "" if getattr(s, "load_avg", None) is None else f"{s.load_avg:.1f}",
            "detail": s.detail,
        }
        for s in state.stages.values()
    ]
    total = sum(s.seconds for s in state.stages.values())
    cpu = sum(getattr(s, "cpu_s", 0.0) for s in state.stages.values())
    head = "## Pipeline\n\n"
    if not state.complete:
        bad = [s for s in state.stages.values() if s.status in ("unavailable", "failed")]
        if bad:
            head += (
                f"**Incomplete: stage `{bad[0].name}` is {bad[0].status}** — "
                f"{bad[0].detail}. Nothing after it was run; no result below is "
                "invented.\n\n"
            )
    return (
        head
        + md_table(rows)
        + f"\nTotal {total:.0f} s wall, {cpu:.0f} s CPU (user + sys, this process and the "
        f"stage commands it ran) on {os.cpu_count()} logical cores. *load* = 1-minute load "
        "average when the stage ended: well above the core count means the machine was "
        "shared and wall times are inflated.\n"
    )


def cohort_section(state: Any, fig_dir: Path) -> str:
    co = state.cohort
    if not co:
        return ""
    rows = []
    for name, s in sorted(co["sites"].items()):
        rows.append(
            {
                "site": name,
                "format": s["format"],
                "µm/px": s["mpp"],
                "JPEG q": s["jpeg_quality"],
                "patients": s["n_patients"],
                "slides": s["n_slides"],
                "events": s["n_events"],
                "mean phenotype fraction": fmt(s["mean_phenotype_fraction"], 2),
                "oracle C (site)": fmt(s["oracle_c_index"]),
            }
        )
    hz = co["hazard"]
    text = (
        "## Demo cohort\n\n"
        "Three simulated hospitals; every slide is a real pyramidal file (Aperio SVS or generic "
        "tiled JPEG TIFF) with procedural H&E-like tissue. A *high-risk phenotype* (sheets of "
        "crowded, large, dark nuclei) covers a fraction F of each patient's tissue; the hazard "
        f"is λ0·exp({hz['beta']}·(F − {hz['centre']})) with a baseline median of "
        f"{hz['baseline_median_months']} months, censoring uniform on "
        f"{hz['censoring_months'][0]}–{hz['censoring_months'][1]} months. Sites differ in "
        "stain, scanner resolution, file format, JPEG quality and case mix, not in biology.\n\n"
        + md_table(rows)
        + f"\nOracle C-index (true risk, all {co['n_patients']} patients): "
        f"{fmt(co['oracle_c_index'])}; within-site pairs only: "
        f"{fmt(co['oracle_c_index_within_site'])}.\n"
    )
    examples = []
    for name, s in sorted(co["sites"].items()):
        slide = next(f for f in s["files"] if "/slides/" in f)
        sid = Path(slide).stem
        examples.append(
            (
                f"site {name}: {Path(slide).name} ({s['format']}, {s['mpp']} µm/px)",
                state.config.cohort_dir / slide,
                state.config.cohort_dir / s["dir"] / "masks" / f"{sid}.png",
            )
        )
    try:
        p = figures.cohort_figure(fig_dir / "cohort.png", examples)
        text += f"\n![cohort]({_rel(state, p)})\n"
    except Exception as e:  # a picture must not sink the report
        log.warning("cohort figure failed: %s", e)
    return text


def results_section(state: Any, fig_dir: Path) -> str:
    ev = state.evaluation.summary
    rows = c_index_rows(ev)
    fed = ev["models"].get("federated", {})
    text = (
        "## Prognostic performance on validation patients\n\n"
        f"{ev['n_val_patients']} validation patients ({ev['n_val_events']} events): fold 0 of "
        f"{ev['fl_config'].get('val_folds')} at every site, kept out of training by `pathfl fl "
        f"simulate` ({ev['n_train_patients']} patients trained on). Federated: "
        f"{ev['fl_config'].get('rounds')} rounds × {ev['fl_config'].get('steps_per_round')} "
        "optimizer steps per site (library defaults: the pooled step budget); pooled and "
        "local-only baselines: the default `pathfl train` recipe on their patients. Every model "
        "is scored on the same patients: Harrell's C over all pairs with a patient-bootstrap "
        "95% CI; *within-site* = only pairs of patients of the same hospital (what a "
        "federation can measure without pooling data); per-site columns use that site's "
        f"validation patients only ({fed.get('comparable_pairs', 0)} comparable pairs in all, "
        f"{fed.get('comparable_pairs_within_site', 0)} within sites).\n\n" + md_table(rows)
    )
    text += (
        "\n*local-only X*: trained on site X's patients only, scored on every site's "
        "validation patients; *local-only, own site*: each site's local model on its own "
        "validation patients (what `pathfl fl simulate` reports as local-only). `pathfl fl "
        "simulate` itself reported a federated within-site C of "
        f"{fmt(ev.get('simulate_reported_federated_c_index'))}.\n\n" + verdict(ev) + "\n"
    )
    arrays = state.evaluation
    risks = {"federated model": arrays.preds["federated"], "oracle": arrays.preds["oracle"]}
    try:
        p = figures.km_plot(
            fig_dir / "km.png",
            arrays.event,
            arrays.time,
            risks,
            cut_points=ev["km_cut_points"],
            time_unit=ev.get("time_unit", "months"),
        )
        text += f"\n![Kaplan–Meier]({_rel(state, fig_dir / 'km.png')})\n"
        text += (
            "\nKaplan–Meier of the validation patients; high risk = above the median risk of "
            "the *training* patients (cut point fixed before looking at these patients); "
            "+ = censored; number at risk under each panel. Log-rank p: "
            + ", ".join(f"{k} {v:.3g}" for k, v in p.items())
            + ".\n"
        )
    except Exception as e:
        log.warning("KM plot failed: %s", e)
    return text


def verdict(ev: dict[str, Any]) -> str:
    """The demo's acceptance check, stated with its numbers, and whether the compared values
    lie inside the federated model's bootstrap 95% CI (not a claim of significance)."""
    m = ev["models"]
    fed, pooled, local = (
        m["federated"]["c_index"],
        m["pooled"]["c_index"],
        ev["local_only_mean_c_index"],
    )
    ok_pooled, ok_local = fed >= pooled - 0.02, fed > local
    text = (
        f"**Check:** federated ≥ pooled − 0.02: {'yes' if ok_pooled else 'NO'} (federated "
        f"{fed:.3f} vs pooled {pooled:.3f} − 0.02 = {pooled - 0.02:.3f}); federated > mean of "
        f"local-only models: {'yes' if ok_local else 'NO'} (federated {fed:.3f} vs "
        f"local-only mean {local:.3f}). Oracle "
        f"{m['oracle']['c_index']:.3f}."
    )
    ci = m["federated"].get("ci95")
    if ci and all(np.isfinite(ci)):
        lo, hi = ci
        inside = [n for n, v in (("pooled", pooled), ("local-only mean", local)) if lo <= v <= hi]
        where = (
            f"{' and '.join(inside)} {'lie' if len(inside) > 1 else 'lies'} inside it"
            if inside
            else "neither pooled nor the local-only mean lies inside it"
        )
        text += (
            f" The federated model's 95% CI on these {ev['n_val_patients']} validation "
            f"patients is {lo:.2f}–{hi:.2f}; {where}."
        )
    return text


def probe_section(state: Any) -> str:
    """Do the encoder's tile features carry the planted phenotype? Cross-validated logistic
    regression from features to 'tile is ≥ 50 % phenotype' over every tile of the cohort."""
    try:
        auc, n, n_pos = phenotype_probe(state)
    except Exception as e:  # a diagnostic must not sink the report
        log.warning("feature probe failed: %s", e)
        return ""
    return (
        f"Do the features carry the phenotype? A 5-fold cross-validated logistic regression "
        f"from each tile's features to 'tile is ≥ 50 % phenotype' (ground-truth mask) reaches "
        f"AUC {auc:.3f} over {n} tiles ({n_pos} phenotype tiles).\n"
    )


def phenotype_probe(state: Any) -> tuple[float, int, int]:
    import cv2
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pathfl.formats.coords_h5 import level0_scale
    from pathfl.formats.features_h5 import read_features

    xs, ys = [], []
    features_dir = Path(state.split["features_dir"])
    for p in state.evaluation.truth.values():
        for sid, info in p["slides"].items():
            path = features_dir / f"{sid}.h5"
            if not path.is_file():
                continue
            feats, coords, attrs = read_features(path)
            mpp0, side = level0_scale(attrs)
            mask = cv2.imread(str(info["mask"]), cv2.IMREAD_GRAYSCALE)
            xs.append(feats.astype(np.float32))
            ys.append(tile_fractions(mask, coords, side, mpp0, info["mask_um_per_px"]) >= 0.5)
    x, y = np.concatenate(xs), np.concatenate(ys)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
    score = cross_val_predict(clf, x, y, cv=5, method="decision_function")
    return float(roc_auc_score(y, score)), len(y), int(y.sum())


def heatmap_section(state: Any, fig_dir: Path, *, attention_auc: dict[str, float]) -> str:
    """The attention heatmap of one validation slide, the feature probe and ``attention_auc``
    (:func:`pathfl.demo.report.attention_auc` of the validation slides)."""
    ev = state.evaluation
    features_dir = Path(state.split["features_dir"])
    bags = ev.bags
    if not bags or not ev.attention:
        return ""
    # the validation patient with the highest true risk; their largest slide
    order = np.argsort(-ev.preds["oracle"])
    b = bags[int(order[0])]
    k = int(np.bincount(b.tile_slide_index, minlength=len(b.slide_ids)).argmax())
    sid = b.slide_ids[k]
    sel = b.tile_slide_index == k
    truth = ev.truth[b.patient_id]["slides"][sid]
    slide_path = next(state.config.cohort_dir.glob(f"site_*/slides/{sid}.*"))
    from pathfl.formats.coords_h5 import level0_scale
    from pathfl.formats.features_h5 import read_attrs

    _, side = level0_scale(read_attrs(features_dir / f"{sid}.h5"))
    i = int(order[0])
    title = (
        f"{sid} (validation, site {ev.site[i]}): phenotype fraction "
        f"{truth['fraction']:.2f}; federated risk rank {_rank(ev, i)} of {len(bags)}"
    )
    text = "## Where the federated model looks\n\n"
    try:
        p = figures.heatmap_figure(
            fig_dir / "heatmap.png",
            slide_path=slide_path,
            mask_path=truth["mask"],
            coords=b.coords[sel],
            tile_l0_px=side,
            scores=ev.attention[b.patient_id][sel],
            title=title,
        )
        text += f"![attention heatmap]({_rel(state, p)})\n\n"
    except Exception as e:
        log.warning("heatmap failed: %s", e)
    text += probe_section(state) + "\n"
    auc = attention_auc
    text += (
        f"Attention vs ground truth over all validation slides: within-slide AUC of the "
        f"attention for tiles that are ≥ 50 % phenotype = {fmt(auc['mean_auc'])} "
        f"(mean of {auc['n_slides']} slides having both kinds of tile; 0.5 = attention "
        "ignores the phenotype, >0.5 = it looks at it, <0.5 = it looks away from it — "
        "an attention model may also score risk by attending to the *low-risk* tissue).\n"
    )
    return text


def _rank(ev: Evaluation, i: int) -> int:
    r = ev.preds["federated"]
    return int((r > r[i]).sum()) + 1


def qc_section(state: Any, fig_dir: Path) -> str:
    thumbs = state.config.work_dir / "tiles" / "thumbnails"
    if not thumbs.is_dir():
        return ""
    import cv2

    items = []
    for name in sorted(state.cohort.get("sites", {})):
        files = sorted(thumbs.glob(f"site{name}-*.png"))
        for f in files[:2]:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is not None:
                items.append((f"site {name}: {f.stem}", cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
    if not items:
        return ""
    p = figures.image_grid(
        fig_dir / "qc_thumbnails.png",
        items,
        ncols=2,
        title="QC thumbnails from `pathfl tile` (tissue contour + tile grid)",
    )
    return (
        "## Tiling QC\n\nTwo slides per site as `pathfl tile` drew them (all are in "
        f"`{_rel(state, thumbs)}`).\n\n![QC]({_rel(state, p)})\n"
    )


def federation_section(state: Any, fig_dir: Path) -> str:
    run = Path(state.fl_run)
    text = "## Federation and audit trail\n\n"
    rounds: list[dict[str, Any]] = []
    rj = run / "rounds.jsonl"
    if rj.is_file():
        rounds = [json.loads(x) for x in rj.read_text().splitlines() if x.strip()]
        text += f"{len(rounds)} round record(s) in `{_rel(state, rj)}`.\n\n"
        final = json.loads((run / "metrics.json").read_text()).get("federated_c_index")
        p = figures.rounds_plot(fig_dir / "fl_rounds.png", rounds, final)
        if p:
            text += f"![rounds]({_rel(state, p)})\n\n"
    rows = audit_summary(state.config.work_dir)
    text += (
        "Audit logs (append-only, hash-chained; checked with `pathfl fl audit verify`):\n\n"
        + md_table(rows)
    )
    return text


def reproduce_section(state: Any) -> str:
    c = state.config
    cmd = f"pathfl demo --out {c.out} --seed {c.seed}" + (" --tiny" if c.tiny else "")
    return (
        "## Reproduce\n\n```\n" + cmd + "\n```\n\nThe stage commands it ran (and their logs) "
        f"are in `{_rel(state, c.work_dir / 'logs')}`; validation predictions in "
        f"`{_rel(state, c.work_dir / 'val_predictions.csv')}`; numbers in "
        f"`{_rel(state, c.work_dir / 'evaluation.json')}`. Python {sys.version.split()[0]}.\n"
    )


def audit_summary(work_dir: Path) -> list[dict[str, str]]:
    """Verify every audit log the federation wrote (server and sites)."""
    from pathfl.fl.trust.audit_summary import audit_summary as rows

    return rows(work_dir)
