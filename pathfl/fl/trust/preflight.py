"""Checks of a local federation's sites before any process starts (``pathfl fl simulate``),
and the reason a federated run failed as its run directory records it.

The simulation has every site's folder on this host, so the checks each site and the server
would make after start-up (clinical table and features files: :func:`load_cohort`; features
made alike across sites: :func:`~pathfl.fl.trust.compat.check_compatibility`) run up front, and a
problem is one message naming the site, the file and the reason instead of a run that fails
minutes later in another process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pathfl.config import ConfigError


class SiteFiles(Protocol):
    """What the checks read of a site (``pathfl.fl.site.SiteSpec`` has it)."""

    name: str
    features: Path
    clinical: Path


logger = logging.getLogger(__name__)


class FederatedRunError(RuntimeError):
    """The federated run did not complete; the message says why (from the run directory)."""


def _site_problem(spec: SiteFiles, covariates: Sequence[str]) -> str | None:
    from pathfl.survival.data import ClinicalError, load_cohort

    try:
        load_cohort(spec.features, spec.clinical, covariates=list(covariates))
    except (ClinicalError, FileNotFoundError) as e:
        return f"site {spec.name!r}: {e}"
    return None


def check_site_data(specs: Sequence[SiteFiles], *, covariates: Sequence[str] = ()) -> None:
    """Every site's clinical table and features files load as the site will load them (with
    the run's ``covariates``), and each site's features files agree among themselves. Raises
    :class:`ConfigError` listing every problem of every site (nothing has been started)."""
    from pathfl.fl.trust.compat import CompatibilityError, site_fingerprint

    problems = [p for p in (_site_problem(s, covariates) for s in specs) if p]
    for spec in specs:
        try:
            site_fingerprint(spec.features)
        except CompatibilityError as e:
            problems.append(f"site {spec.name!r}: {e}")
    if problems:
        raise ConfigError("site data problems (nothing was started):\n" + "\n".join(problems))


def check_site_compat(specs: Sequence[SiteFiles], cfg: dict[str, Any]) -> list[str]:
    """The sites' features fingerprints under ``compat_policy`` and ``min_sites`` of ``cfg``,
    as the server will check them. Raises :class:`ConfigError` naming each site and field that
    differs when the run could not start; returns the sites that will take part."""
    from pathfl.fl.trust.compat import check_compatibility, site_fingerprint

    records = {spec.name: site_fingerprint(spec.features) for spec in specs}
    result = check_compatibility(
        records, policy=str(cfg["compat_policy"]), min_sites=int(cfg["min_sites"])
    )
    if not result.ok:
        raise ConfigError(
            f"sites are not compatible (compat_policy={result.policy}, "
            f"min_sites={cfg['min_sites']}; nothing was started):\n" + "\n".join(result.messages)
        )
    for site, reasons in result.excluded.items():
        logger.warning("site %s will be excluded: %s", site, "; ".join(reasons))
    return result.accepted


def failure_reason(run_dir: Path, result: dict[str, Any]) -> tuple[str, bool]:
    """Why a federated run failed: its status message plus what ``sites.json`` says about
    excluded or unanswered sites. The flag is True when sites explain it (a data problem)."""
    lines = [str(result.get("message") or f"run ended as {result.get('flower_status')}")]
    sites_json = Path(run_dir) / "sites.json"
    explained = False
    if sites_json.is_file():
        try:
            sites = json.loads(sites_json.read_text())
        except (OSError, ValueError):
            sites = {}
        for site, reasons in sorted((sites.get("excluded") or {}).items()):
            lines.append(f"site {site!r} excluded: " + "; ".join(map(str, reasons)))
            explained = True
        for node, reason in sorted((sites.get("unanswered") or {}).items()):
            lines.append(f"{node} did not take part: {reason}")
            explained = True
        lines.append(f"(details: {sites_json})")
    if not explained and result.get("log_tail"):
        lines.append(str(result["log_tail"])[-1500:])
    return "\n".join(lines), explained
