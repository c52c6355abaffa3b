"""Per-site personalisation after a federation (``pathfl fl simulate --personalise head|norm``):
each site adapts the final global model to its own training part
(:func:`pathfl.survival.personalise.fine_tune`) and scores the global and the personalised
model on its own validation patients.

This is a local step: it runs where the site's data is, sends nothing, and is no message kind
of the federation (the reply whitelist in :mod:`pathfl.fl.trust.records` is unchanged). The
personalised model is written into the site's own state folder as a run directory that
``pathfl predict`` reads (``<site state dir>/personalised-<part>/``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pathfl.fl.site import SiteData, one_torch_thread, train_config

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 100  # optimizer steps of the local adaptation


def personalise(
    fit: dict[str, Any],
    train_bags: list[Any],
    cfg: dict[str, Any],
    *,
    part: str,
    steps: int = DEFAULT_STEPS,
) -> dict[str, Any]:
    """``fit`` (model, scaler, time_bins, baseline) adapted to ``train_bags`` (raw bags of one
    site): a new fit dict; ``fit`` itself is not modified. A Cox baseline is refitted on the
    site's bags with the adapted model."""
    from pathfl.survival.personalise import fine_tune
    from pathfl.survival.train import fit_baseline

    tcfg = train_config(cfg)
    p = fine_tune(
        fit["model"],
        fit["scaler"],
        train_bags,
        tcfg,
        part=part,
        time_bins=fit.get("time_bins"),
        steps=steps,
        seed=int(cfg["seed"]),
    )
    baseline = fit_baseline(p.model, p.scaler.apply(train_bags), tcfg)
    return {
        "model": p.model,
        "scaler": p.scaler,
        "time_bins": fit.get("time_bins"),
        "baseline": baseline,
        "trained": p.trained,
        "stats": p.stats,
    }


def personalise_site(
    data: SiteData,
    global_fit: dict[str, Any],
    cfg: dict[str, Any],
    *,
    part: str,
    n_boot: int,
    out: Path | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[dict[str, Any]]:
    """Personalise on ``data.train``, save the result as a run dir (``out``, default
    ``data.state_dir/personalised-<part>``), and score both models on ``data.val``: two table
    rows."""
    from pathfl.fl.unseen_site import risks, score
    from pathfl.survival.data import bags_fingerprint
    from pathfl.survival.run import save_run

    mine = personalise(global_fit, data.train, cfg, part=part, steps=steps)
    run = Path(out) if out is not None else Path(data.state_dir) / f"personalised-{part}"
    save_run(
        run,
        mine["model"],
        train_config(cfg),
        feature_dim=data.feature_dim,
        fingerprint=bags_fingerprint(data.train),
        time_bins=mine["time_bins"],
        scaler=mine["scaler"],
        metrics=None,
        predictions=None,
        baseline=mine["baseline"],
        extra={"personalised": part, "trained_parameters": mine["trained"], "site": data.site},
    )
    kw = {"n_boot": n_boot, "seed": int(cfg["seed"])}
    rows = [
        score("global", [risks(global_fit, data.val, cfg).risk], data.val, **kw),
        score(f"personalised {part}", [risks(mine, data.val, cfg).risk], data.val, **kw),
    ]
    return [{"site": data.site, "run_dir": str(run), **r} for r in rows]


def personalise_sites(
    specs: list[Any], cfg: dict[str, Any], run_dir: Path, *, part: str, n_boot: int = 200
) -> list[dict[str, Any]]:
    """Simulation: every site of ``specs`` personalises the global model of ``run_dir`` (its
    state folder: ``run_dir/federation/sites/<site>``, beside its audit log)."""
    from pathfl.fl.baselines import load_sites
    from pathfl.fl.unseen_site import federated_fit

    global_fit = federated_fit(run_dir)
    rows: list[dict[str, Any]] = []
    with one_torch_thread():
        for s in load_sites(specs, cfg):
            s.state_dir = Path(run_dir) / "federation" / "sites" / s.site
            if s.val:
                rows += personalise_site(s, global_fit, cfg, part=part, n_boot=n_boot)
    return rows


def personalise_deployed_site(
    run_dir: Path,
    features: Path,
    clinical: Path,
    *,
    site: str,
    part: str,
    out: Path,
    steps: int = DEFAULT_STEPS,
    n_boot: int = 200,
    audit_log: Path | None = None,
) -> list[dict[str, Any]]:
    """A site of a real federation (``pathfl fl personalise``): adapt the final global model
    of ``run_dir`` (its ``model.pt``, ``config.json`` and ``fl_config.json``, which the
    aggregator shares with the sites — model weights and run settings, no patient data) to this
    site's own data, split into training and validation parts exactly as in the federation
    (the run's ``val_folds`` and ``seed``), and score both models on the validation part.
    Writes the personalised run dir ``out`` (``pathfl predict`` reads it) and
    ``out/personalised.json``; sends nothing. With ``audit_log`` (the site's audit log), one
    ``personalised`` entry records what was done."""
    import json

    from pathfl.config import ConfigError
    from pathfl.fl.baselines import load_sites
    from pathfl.fl.rundir import RunDir
    from pathfl.fl.site import SiteSpec
    from pathfl.fl.trust.audit import AuditLog
    from pathfl.fl.unseen_site import federated_fit
    from pathfl.io import write_json_atomic

    cfg_path = Path(run_dir) / "fl_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir}: not a federated run dir (no fl_config.json)")
    cfg = json.loads(cfg_path.read_text())["config"]
    run_id = str(RunDir(run_dir).read_status().get("run_id", ""))
    global_fit = federated_fit(Path(run_dir))
    with one_torch_thread():
        (data,) = load_sites([SiteSpec(site, Path(features), Path(clinical))], cfg)
        if not data.val:
            raise ConfigError(f"{features}: no validation part (the run has val_folds = 0)")
        rows = personalise_site(
            data, global_fit, cfg, part=part, n_boot=n_boot, out=Path(out), steps=steps
        )
    write_json_atomic(Path(out) / "personalised.json", {"global_run": str(run_dir), "rows": rows})
    if audit_log is not None:
        AuditLog(Path(audit_log), run_id=run_id).append(
            "personalised", site=site, part=part, steps=steps, global_run=str(run_dir),
            out=str(out), c_index={r["method"]: r["c_index"] for r in rows},
        )  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: global vs personalised per site (validation patients)."""
    lines = ["| site | model | n | events | C-index [95% CI] |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['site']} | {r['method']} | {r['n']} | {r['events']} "
            f"| {r['c_index']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] |"
        )
    return "\n".join(lines) + "\n"
