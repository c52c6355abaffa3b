"""``pathfl fl simulate``: N site folders → a real local federation (processes on 127.0.0.1),
one federated run, the local-only and pooled baselines and a comparison table."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathfl.config import ConfigError
from pathfl.fl.flower.federation import LocalFederation, follow_run
from pathfl.fl.site import SiteSpec
from pathfl.fl.trust.preflight import (
    FederatedRunError,
    check_site_compat,
    check_site_data,
    failure_reason,
)
from pathfl.io import write_json_atomic

logger = logging.getLogger(__name__)


def site_specs(site_dirs: list[Path], *, policy: Path | None = None) -> list[SiteSpec]:
    """Each site folder holds ``features/`` and ``clinical.csv``; its name is the site name."""
    specs, seen = [], set()
    for d in site_dirs:
        d = Path(d)
        feats, clin = d / "features", d / "clinical.csv"
        if not feats.is_dir() or not clin.is_file():
            raise ConfigError(f"{d}: a site folder needs features/ and clinical.csv")
        if d.name in seen:
            raise ConfigError(f"{d}: two site folders are named {d.name!r}")
        seen.add(d.name)
        specs.append(SiteSpec(d.name, feats, clin, policy))
    if len(specs) < 2:
        raise ConfigError("a federation needs at least two site folders")
    return specs


def default_time_grid(specs: list[SiteSpec]) -> float:
    """Simulation only: the longest follow-up over all sites (a real federation sets
    ``time_grid_max`` from domain knowledge, since no party sees every site's times)."""
    from pathfl.survival.data import load_clinical

    return max(max(r.time for r in load_clinical(s.clinical, covariates=[]).rows) for s in specs)


TRANSPORTS = ("flower", "inprocess")


def simulate(
    specs: list[SiteSpec],
    user_cfg: dict[str, Any],
    out: Path,
    *,
    tls: bool = True,
    baselines: bool = True,
    timeout_s: float | None = None,
    env_extra: dict[str, str] | None = None,
    use_worker: bool = True,
    fast_poll: bool = True,
    on_round: Callable[[Any], None] | None = None,
    personalise: str | None = None,
    transport: str = "flower",
) -> dict[str, Any]:
    """Run the federation and (optionally) the baselines; returns a summary dict and writes
    ``OUT/comparison.csv`` + ``OUT/comparison.md`` next to the federated run's files.
    ``personalise`` (head | norm): each site then adapts the global model locally
    (:mod:`pathfl.fl.personalise`; ``OUT/personalised.json``). ``transport``: ``flower``
    (real SuperLink + SuperNode processes on 127.0.0.1) or ``inprocess`` (the same coordinator
    and ClientApp in this process, no network: :mod:`pathfl.fl.flower.inprocess`, for
    benchmarks; ``tls``, ``timeout_s``, ``env_extra``, ``use_worker``, ``fast_poll`` and
    ``on_round`` do not apply to it)."""
    from pathfl.fl.fl_config import effective_config, run_timeout_s

    if transport not in TRANSPORTS:
        raise ConfigError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
    user = dict(user_cfg)
    user.setdefault("num_sites", len(specs))
    # before any process starts: one message naming site and file
    check_site_data(specs, covariates=[str(c) for c in user.get("covariates") or []])
    if not user.get("time_bins") and not user.get("time_grid_max"):
        user["time_grid_max"] = default_time_grid(specs)
    cfg = effective_config(user)
    check_site_compat(specs, cfg)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pids: list[int] = []
    if transport == "inprocess":
        from pathfl.fl.flower.inprocess import run_inprocess

        write_json_atomic(out / "fl_config.json", {"config": cfg, "mode": "simulate"})
        run_id, result = run_inprocess(specs, cfg, out, work=out / "federation")
    else:
        run_id, result, pids = _run_flower(
            specs,
            cfg,
            out,
            timeout_s=timeout_s or run_timeout_s(cfg),
            on_round=on_round,
            local=dict(
                tls=tls,
                auth=tls,
                env_extra=dict(env_extra or {}),
                use_worker=use_worker,
                fast_poll=fast_poll,
            ),
        )
    if result.get("state") != "completed":
        reason, by_sites = failure_reason(out, result)
        message = f"federated run {run_id} did not complete: {reason}"
        raise ConfigError(message) if by_sites else FederatedRunError(message)
    summary = {"run_id": run_id, "run_dir": str(out), "pids": pids, "transport": transport}
    return _summarise(specs, cfg, out, summary, baselines=baselines, personalise=personalise)


def _run_flower(
    specs: list[SiteSpec],
    cfg: dict[str, Any],
    out: Path,
    *,
    timeout_s: float,
    on_round: Callable[[Any], None] | None,
    local: dict[str, Any],
) -> tuple[int, dict[str, Any], list[int]]:
    """The run as real processes on 127.0.0.1 (:class:`LocalFederation` with ``local``):
    ``(Flower run id, follow_run's result, PIDs started)``."""
    with LocalFederation(out / "federation", **local) as fed:
        fed.start(specs)
        write_json_atomic(out / "fl_config.json", {"config": cfg, "mode": "simulate"})
        run_id = fed.submit(cfg, out)
        result = follow_run(
            fed.home,
            run_id,
            out,
            timeout_s=timeout_s,
            superlink_log=fed.superlink.log_path,
            stop_on_interrupt=False,  # leaving the block stops the SuperLink and the run
            on_round=on_round,  # RoundInfo per finished round (progress)
        )
        pids = [fed.superlink.pid, *(p.pid for p in [*fed.sites.values(), *fed.workers.values()])]
    return run_id, result, pids


def _summarise(
    specs: list[SiteSpec],
    cfg: dict[str, Any],
    out: Path,
    summary: dict[str, Any],
    *,
    baselines: bool,
    personalise: str | None,
) -> dict[str, Any]:
    """The finished run's summary: federated C, the baselines and comparison table, the
    personalised models and the report (the same for every transport)."""
    metrics = json.loads((out / "metrics.json").read_text())
    summary["federated_c_index"] = metrics["federated_c_index"]
    if baselines:
        from pathfl.fl.baselines import comparison_rows, run_baselines, write_comparison

        base = run_baselines(specs, cfg)
        write_json_atomic(out / "baselines.json", base)
        table = write_comparison(out / "comparison.csv", comparison_rows(metrics, base))
        (out / "comparison.md").write_text(table)
        summary.update(baselines=base, table=table)
    if personalise:
        from pathfl.fl.personalise import personalise_sites
        from pathfl.fl.personalise import table as personal_table

        rows = personalise_sites(specs, cfg, out, part=personalise, n_boot=cfg["train"]["n_boot"])
        write_json_atomic(out / "personalised.json", rows)
        summary["personalised_table"] = personal_table(rows)

    from pathfl.fl.report import write_run_report

    summary["report"] = str(write_run_report(out) or "")
    return summary
