"""`pathfl fl simulate` checks every site's data and the sites' compatibility before it starts
a process: one message naming the site, the file and the reason, exit 2, nothing started.
A run that fails anyway names the excluded sites from its sites.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from pathfl.fl.trust.preflight import failure_reason
from pathfl.survival.synthetic import make_cohort, split_into_sites


def _simulate(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pathfl", "fl", "simulate", "--insecure", "--no-baselines",
         *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture
def sites(tmp_path: Path) -> list[Path]:
    c = make_cohort(tmp_path / "cohort", n_patients=12, feature_dim=4, tiles=(3, 5), seed=2)
    return split_into_sites(c, tmp_path / "sites", ["a", "b", "c"])


def _own_copies(site: Path, **attrs: object) -> None:
    """Replace the site's feature symlinks with copies and set ``attrs`` in each."""
    for link in (site / "features").glob("*.h5"):
        target = link.resolve()
        link.unlink()
        shutil.copy(target, link)
        with h5py.File(link, "r+") as f:
            f.attrs.update(attrs)


def _site_args(sites: list[Path]) -> list[object]:
    return [x for s in sites for x in ("--site", s)]


def test_bad_clinical_table_named_with_site_file_and_line(sites, tmp_path) -> None:
    clin = sites[1] / "clinical.csv"
    lines = clin.read_text().splitlines()
    cells = lines[2].split(",")
    cells[3] = "2"  # event
    lines[2] = ",".join(cells)
    clin.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    r = _simulate(*_site_args(sites), "--out", out)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "nothing was started" in r.stderr
    assert f"site 'b': {clin}: 1 problem(s)" in r.stderr
    assert f"line 3 (patient_id={cells[0]}, slide_id={cells[1]}): event '2'" in r.stderr
    assert not out.exists()


def test_incompatible_sites_refused_before_start(sites, tmp_path) -> None:
    _own_copies(sites[2], target_mpp=8.0, tile_size=16)
    out = tmp_path / "run"
    r = _simulate(*_site_args(sites), "--out", out)
    assert r.returncode == 2, r.stderr
    assert "sites are not compatible (compat_policy=refuse" in r.stderr
    assert "site 'c': target_mpp=8.0 but 0.5 at site(s) a, b" in r.stderr
    assert "site 'c': tile_size=16 but 224" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    # exclude policy, but too few compatible sites left: the reason, not just min_sites
    cfg = tmp_path / "fl.yaml"
    cfg.write_text("compat_policy: exclude\nmin_sites: 3\n")
    r = _simulate(*_site_args(sites), "--out", out, "--config", cfg)
    assert r.returncode == 2, r.stderr
    assert "site 'c': target_mpp=8.0" in r.stderr
    assert "only 2 compatible site(s) left, fewer than min_sites=3" in r.stderr
    # a site whose own files disagree is named with the file and field
    with h5py.File(next((sites[0] / "features").glob("*.h5")).resolve(), "r+") as f:
        f.attrs["encoder"] = "other"
    r = _simulate(*_site_args(sites[:2]), "--out", out)
    assert r.returncode == 2 and "site 'a':" in r.stderr and "encoder='other'" in r.stderr


def test_failed_run_reason_names_the_excluded_sites(tmp_path) -> None:
    (tmp_path / "sites.json").write_text(
        json.dumps(
            {
                "accepted": ["a"],
                "excluded": {"c": ["site 'c': target_mpp=8.0 but 0.5 at site(s) a"]},
                "unanswered": {"node-7": "ClinicalError: clinical.csv: line 3: event '2'"},
            }
        )
    )
    text, by_sites = failure_reason(tmp_path, {"message": "only 1 compatible site(s), min 2"})
    assert by_sites
    assert text.splitlines()[:3] == [
        "only 1 compatible site(s), min 2",
        "site 'c' excluded: site 'c': target_mpp=8.0 but 0.5 at site(s) a",
        "node-7 did not take part: ClinicalError: clinical.csv: line 3: event '2'",
    ]
    assert str(tmp_path / "sites.json") in text
    (tmp_path / "sites.json").unlink()
    text, by_sites = failure_reason(tmp_path, {"flower_status": "finished:failed", "log_tail": "x"})
    assert not by_sites and "finished:failed" in text
