"""``report.html`` of a ``pathfl train`` run, a federated run (``pathfl fl simulate`` /
``fl run``) and the demo. Each reads only the run's own files (config.json, metrics.json,
sites.json, rounds.jsonl, plots/*.png, ...) and takes anything computed elsewhere (the
audit summary) as plain data, so this package sits below :mod:`pathfl.fl` and
:mod:`pathfl.demo`."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pathfl import __version__
from pathfl.report import markdown
from pathfl.report.html import Page, fmt_ci

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FINGERPRINT_KEYS = (
    ("encoder", "encoder"),
    ("weights_sha256", "weights SHA-256"),
    ("target_mpp", "µm/px"),
    ("tile_size", "tile px"),
    ("feature_dim", "feature dim"),
    ("dtype", "dtype"),
    ("pathfl_version", "pathfl (extraction)"),
)
KNOWN_PICTURES = {
    "km_risk_groups": "Kaplan–Meier of the out-of-fold risk groups (high = above the median "
    "risk of each fold's training patients).",
}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def fingerprint_rows(fingerprints: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per source (``name`` → fingerprint dict) with the encoder, weights hash,
    µm/px, tile size, feature dimension."""
    rows = []
    for name, fp in fingerprints.items():
        row: dict[str, Any] = {"source": name}
        for key, label in FINGERPRINT_KEYS:
            if key in fp:
                row[label] = fp[key]
        rows.append(row)
    return rows


def metric_row(label: str, m: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics dict (:func:`pathfl.survival.metrics.survival_metrics`) as a table row: n,
    events, comparable pairs, Harrell and Uno C with 95% CIs, mean td-AUC, IBS."""
    return {
        "": label,
        "patients": m.get("n", "—"),
        "events": m.get("n_events", "—"),
        "comparable pairs": m.get("n_comparable", "—"),
        "Harrell C [95% CI]": fmt_ci(m.get("c_index"), m.get("c_index_ci95")),
        "Uno C [95% CI]": fmt_ci(m.get("uno_c"), m.get("uno_c_ci95")),
        "mean td-AUC": float(m.get("mean_auc", float("nan"))),
        "integrated Brier": float(m.get("integrated_brier", float("nan"))),
    }


def _pictures(page: Page, run_dir: Path, *, skip: Sequence[Path] = ()) -> None:
    """Every PNG the run wrote (plots/, heatmaps/, ...), known ones with their caption."""
    seen = {p.resolve() for p in skip}
    for p in sorted(run_dir.rglob("*.png")):
        if p.resolve() in seen or "federation" in p.relative_to(run_dir).parts:
            continue
        page.image(p, caption=KNOWN_PICTURES.get(p.stem, str(p.relative_to(run_dir))))


def train_report(
    run_dir: str | os.PathLike[str], *, title: str = "pathfl train", name: str | None = None
) -> Path:
    """Write ``RUN/report.html`` of a ``pathfl train`` run directory; return its path.
    ``name``: the run's name when ``run_dir`` is the temporary folder it is built in."""
    run_dir = Path(run_dir)
    cfg, metrics = _json(run_dir / "config.json"), _json(run_dir / "metrics.json")
    page = Page(title, subtitle=f"pathfl {__version__} · run {name or run_dir.name}")
    final = metrics.get("final_model") or {}
    page.heading("Run")
    page.key_values(
        {
            "model / loss": f"{cfg.get('model')} / {cfg.get('loss')}",
            "patients": cfg.get("n_patients", "—"),
            "folds": cfg.get("folds", "—"),
            "covariates": (cfg.get("train_config") or {}).get("covariates") or "none",
            "final model": f"trained on {final.get('trained_on')}: "
            f"{final.get('passes_run', final.get('epochs'))} passes (epochs "
            f"{final.get('epochs')}, at least min_steps optimizer steps), training loss "
            f"{final.get('train_loss', float('nan')):.3f}"
            if final
            else "none (cross-validation only)",
        }
    )
    fp = cfg.get("fingerprint") or {}
    if fp:
        page.heading("Features (fingerprint)")
        page.table(fingerprint_rows({"features": fp}))
    _train_metrics(page, metrics)
    _pictures(page, run_dir)
    page.heading("Configuration")
    page.json_block(cfg.get("train_config", {}), summary="training configuration (config.json)")
    return page.write(run_dir / REPORT_NAME)


def _train_metrics(page: Page, metrics: Mapping[str, Any]) -> None:
    folds = metrics.get("folds") or []
    if not folds:
        page.heading("Metrics").paragraph("No cross-validation (folds = 1): no validation metrics.")
        return
    rows = [metric_row(f"fold {m['fold'] + 1}", m) for m in folds]
    if "pooled_oof" in metrics:
        rows.append(metric_row("pooled out-of-fold", metrics["pooled_oof"]))
    if "linear_cox" in metrics:
        rows.append(metric_row("linear-cox baseline (OOF)", metrics["linear_cox"]))
    page.heading("Validation metrics (cross-validation, by patient)")
    page.table(rows)
    page.paragraph(
        "Harrell's C over comparable pairs with a patient-bootstrap 95% CI; td-AUC = "
        "cumulative/dynamic AUC at the times below; a dash = not computable."
    )
    oof = metrics.get("pooled_oof", {})
    if oof.get("auc_times"):
        page.heading("Time-dependent AUC (pooled out-of-fold)", level=3)
        page.table(
            [
                {"time": float(t), "AUC": float(a)}
                for t, a in zip(oof["auc_times"], oof["auc"], strict=False)
            ]
        )
    km = metrics.get("km_logrank") or {}
    if km:
        page.paragraph(
            f"Log-rank test, high vs low risk group: χ² {km.get('chisq', float('nan')):.2f}, "
            f"p = {km.get('p_value', float('nan')):.3g} ({km.get('n_high')} high, "
            f"{km.get('n_low')} low)."
        )


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def round_rows(rounds: Sequence[Mapping[str, Any]], n_sites: int) -> list[dict[str, Any]]:
    """One row per federated round: sites answered, time, the previous global model's C."""
    rows = []
    for r in rounds:
        sites = r.get("sites") or {}
        answered = sum(1 for s in sites.values() if s.get("status") == "aggregated")
        problems = {**r.get("failed", {}), **r.get("rejected", {})}
        rows.append(
            {
                "round": r.get("round"),
                "sites aggregated": f"{answered}/{n_sites or len(sites)}",
                "seconds": float(r.get("seconds", float("nan"))),
                "slowest site compute s": float(r.get("max_site_compute_s", float("nan"))),
                "federated C (global model before the round)": float(
                    r.get("federated_c_index_prev_global", float("nan"))
                ),
                "missing / failed / rejected": ", ".join(
                    [*r.get("missing", []), *(f"{k}: {v}" for k, v in problems.items())]
                )
                or "—",
            }
        )
    return rows


def site_rows(final_per_site: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-site validation C of the final federated model with patients, events and
    comparable pairs; a dash with the reason where the C-index is not defined."""
    rows = []
    for name, s in sorted(final_per_site.items()):
        pairs = int(s.get("val_n_comparable", 0))
        c = s.get("val_c_index")
        rows.append(
            {
                "site": name,
                "val patients": int(s.get("val_n_samples", 0)),
                "events": int(s.get("val_n_events", 0)),
                "comparable pairs": pairs,
                "C-index": f"{c:.3f}" if pairs and c is not None else "— (no comparable pair)",
                "val loss": float(s.get("val_loss", float("nan"))),
            }
        )
    return rows


def fl_report(
    run_dir: str | os.PathLike[str],
    *,
    audit_rows: Sequence[Mapping[str, Any]] = (),
    title: str = "pathfl federated run",
) -> Path:
    """Write ``RUN/report.html`` of a federated run directory (``audit_rows``: see
    :func:`pathfl.fl.trust.audit_summary.audit_summary`); return its path."""
    run_dir = Path(run_dir)
    status, metrics = _json(run_dir / "status.json"), _json(run_dir / "metrics.json")
    fl_cfg = _json(run_dir / "fl_config.json").get("config", {})
    sites = _json(run_dir / "sites.json")
    page = Page(title, subtitle=f"pathfl {__version__} · run {run_dir.name}")
    page.heading("Run")
    page.key_values(
        {
            "state": status.get("state", "unknown")
            + (f" ({status['message']})" if status.get("message") else ""),
            "rounds": len(metrics.get("rounds") or []) or status.get("rounds", "—"),
            "aggregation": fl_cfg.get("aggregation", "—"),
            "model / loss": f"{fl_cfg.get('model')} / {fl_cfg.get('loss')}",
            "sites accepted": sites.get("accepted", []),
            "sites excluded": ", ".join(
                f"{k}: {v}" for k, v in (sites.get("excluded") or {}).items()
            )
            or "none",
            "differential privacy": "on" if fl_cfg.get("dp") else "off",
            "wall time s": float(metrics.get("seconds", float("nan"))),
        }
    )
    _fl_metrics(page, metrics, sites)
    if sites.get("fingerprints"):
        page.heading("Features of each site (fingerprints)")
        page.table(fingerprint_rows(sites["fingerprints"]))
    rounds = _read_rounds(run_dir / "rounds.jsonl")
    page.heading("Rounds")
    page.table(round_rows(rounds, len(sites.get("accepted", []))))
    _comparison(page, run_dir / "comparison.csv")
    _pictures(page, run_dir)
    page.heading("Audit trail")
    page.raw(
        "<p>"
        + markdown.inline("Append-only, hash-chained logs (check with `pathfl fl audit verify`).")
        + "</p>"
    )
    page.table(list(audit_rows))
    page.heading("Configuration")
    page.json_block(fl_cfg, summary="effective federated configuration (fl_config.json)")
    return page.write(run_dir / REPORT_NAME)


def _fl_metrics(page: Page, metrics: Mapping[str, Any], sites: Mapping[str, Any]) -> None:
    page.heading("Federated model on the sites' validation patients")
    per_site = metrics.get("final_per_site") or {}
    rows = site_rows(per_site)
    n = sum(r["val patients"] for r in rows)
    events = sum(r["events"] for r in rows)
    pairs = sum(r["comparable pairs"] for r in rows)
    c = metrics.get("federated_c_index")
    page.paragraph(
        f"Federated C-index {c:.3f} over {n} validation patients, {events} events, {pairs} "
        "comparable within-site pairs (cross-site pairs are not compared: no party sees two "
        "sites' data). No CI: a bootstrap would need patient-level risks at one place."
        if isinstance(c, float) and pairs
        else "Federated C-index: — (no comparable validation pair)."
    )
    page.table(rows)
    lc = metrics.get("linear_cox") or {}
    if "federated_c_index" in lc:
        page.paragraph(
            f"Federated linear-cox baseline: C-index {lc['federated_c_index']:.3f} "
            f"(converged: {lc.get('converged')}, {lc.get('iterations')} iterations)."
        )


def _comparison(page: Page, path: Path) -> None:
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    page.heading("Federated vs local-only and pooled baselines")
    page.paragraph("Within-site C-index on the same validation patients (comparison.csv).")
    page.table(rows)


def markdown_report(
    md_path: str | os.PathLike[str],
    *,
    title: str,
    out: str | os.PathLike[str] | None = None,
    fingerprints: Mapping[str, Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """``report.md`` (images relative to its folder) → a self-contained ``report.html``
    beside it (or at ``out``); the Markdown's own ``# title`` line is replaced by ``title``.
    ``fingerprints`` (source → fingerprint dict) and ``config`` are added as sections."""
    md_path = Path(md_path)
    lines = md_path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    page = Page(title, subtitle=f"pathfl {__version__}")
    page.raw(markdown.to_html("\n".join(lines), base=md_path.parent))
    if fingerprints:
        page.heading("Features of each site (fingerprints)")
        page.table(fingerprint_rows(fingerprints))
    if config:
        page.heading("Configuration")
        page.json_block(dict(config), summary="configuration of this run")
    return page.write(Path(out) if out else md_path.with_suffix(".html"))


def write_report_safely(kind: str, run_dir: str | os.PathLike[str], **kw: Any) -> Path | None:
    """Write the ``kind`` report (``train`` | ``fl``) of ``run_dir``; a failure is logged as a
    warning and returns None — a report must never sink the run it describes."""
    writer = {"train": train_report, "fl": fl_report}[kind]
    try:
        return writer(run_dir, **kw)
    except Exception as e:  # the run's results are already on disk
        log.warning("%s: report.html not written: %s", run_dir, e)
        return None
