"""``pathfl fl simulate --leave-one-site-out``: for every site ``h`` of k, a real local
federation (processes on 127.0.0.1, :func:`pathfl.fl.flower.simulate.simulate`) over the other
k−1 sites, then the federated, pooled and local-only models scored on every patient of ``h``
(:mod:`pathfl.fl.unseen_site`). With ``personalise``, ``h`` also adapts the federated model
on its own training part and both are scored on its validation part.

Layout: ``OUT/held_out_<site>/`` is one federated run dir (as ``fl simulate --out`` writes)
plus ``unseen_site.json``; ``OUT/unseen_site.csv`` and ``unseen_site.md`` hold the table. A
re-run skips the sites whose ``unseen_site.json`` is already written."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pathfl.config import ConfigError
from pathfl.fl.site import SiteSpec
from pathfl.io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


def _fold_user_config(user_cfg: dict[str, Any], n_train: int) -> dict[str, Any]:
    user = dict(user_cfg)
    user["num_sites"] = n_train
    user["min_sites"] = min(int(user.get("min_sites") or 2), n_train)
    return user


def held_out_fold(
    specs: list[SiteSpec],
    held: SiteSpec,
    user_cfg: dict[str, Any],
    out: Path,
    *,
    personalise: str | None = None,
    baselines: bool = True,
    **simulate_kw: Any,
) -> list[dict[str, Any]]:
    """One federation without ``held`` and its unseen-site rows (cached in
    ``out/unseen_site.json``)."""
    from pathfl.fl.flower.simulate import simulate
    from pathfl.fl.unseen_site import adapt_rows, held_out_rows

    done = out / "unseen_site.json"
    if done.is_file():
        cached = json.loads(done.read_text())
        if (cached.get("personalise"), cached.get("baselines", True)) == (personalise, baselines):
            logger.info("held-out site %s: already evaluated (%s)", held.name, done)
            return cached["rows"]
    train_specs = [s for s in specs if s is not held]
    user = _fold_user_config(user_cfg, len(train_specs))
    summary = simulate(train_specs, user, out, baselines=False, **simulate_kw)
    cfg = json.loads((out / "fl_config.json").read_text())["config"]
    n_boot = int(cfg["train"]["n_boot"])
    rows = held_out_rows(out, held, train_specs, cfg, n_boot=n_boot, baselines=baselines)
    if personalise:
        rows += adapt_rows(out, held, cfg, part=personalise, n_boot=n_boot)
    write_json_atomic(
        done,
        {
            "run_id": summary["run_id"],
            "personalise": personalise,
            "baselines": baselines,
            "rows": rows,
        },
    )
    return rows


def leave_one_site_out(
    specs: list[SiteSpec],
    user_cfg: dict[str, Any],
    out: Path,
    *,
    personalise: str | None = None,
    baselines: bool = True,
    **simulate_kw: Any,
) -> dict[str, Any]:
    """Every site held out once (k federations of k−1 sites); returns ``{"rows", "table"}``
    and writes ``OUT/unseen_site.csv`` + ``OUT/unseen_site.md``. ``simulate_kw`` go to
    :func:`pathfl.fl.flower.simulate.simulate` (tls, timeout_s, ...); ``baselines=False``
    skips the pooled and local-only models."""
    from pathfl.fl.unseen_site import write_table

    if len(specs) < 3:
        raise ConfigError(
            "--leave-one-site-out needs at least three site folders (each federation keeps "
            f"two or more sites); got {len(specs)}"
        )
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for held in specs:
        logger.info("leave-one-site-out: federating without %s", held.name)
        fold_dir = out / f"held_out_{held.name}"
        rows += held_out_fold(
            specs, held, user_cfg, fold_dir, personalise=personalise, baselines=baselines,
            **simulate_kw,
        )  # fmt: skip
    table = write_table(out / "unseen_site.csv", rows)
    write_text_atomic(out / "unseen_site.md", table)
    return {"rows": rows, "table": table, "run_dir": str(out)}
