"""The demo cohort generator: determinism, real readable slides, planted phenotype, hazard."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pathfl.demo.cohort import demo_spec, generate_cohort, simulate_survival
from pathfl.demo.tissue import StainStyle, render_tissue
from pathfl.io import sha256_file
from pathfl.survival.metrics import concordance_counts, harrell_c


def mini_spec(seed: int = 0, n_patients: int = 2):
    spec = demo_spec(tiny=True, seed=seed)
    sites = tuple(
        dataclasses.replace(s, n_patients=n_patients, two_slide_prob=0.5) for s in spec.sites
    )
    return dataclasses.replace(spec, sites=sites, slide_w_um=(300, 340), slide_h_um=(240, 260))


@pytest.fixture(scope="module")
def mini_cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cohort")
    return out, generate_cohort(out, seed=3, spec=mini_spec(3))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_and_clinical_contract(mini_cohort):
    out, summary = mini_cohort
    assert set(summary["sites"]) == {"A", "B", "C"}
    for name, s in summary["sites"].items():
        rows = _rows(out / s["dir"] / "clinical.csv")
        assert list(rows[0]) == ["patient_id", "slide_id", "time", "event", "site"]
        assert {r["site"] for r in rows} == {name}
        assert all(float(r["time"]) > 0 and r["event"] in ("0", "1") for r in rows)
        for r in rows:  # every slide and its ground-truth mask exist
            assert (out / s["dir"] / "slides" / f"{r['slide_id']}.{s['format']}").is_file()
            assert (out / s["dir"] / "masks" / f"{r['slide_id']}.png").is_file()
    assert (out / "cohort.json").is_file()


def test_generator_is_deterministic(tmp_path, mini_cohort):
    out, summary = mini_cohort
    again = generate_cohort(tmp_path / "again", seed=3, spec=mini_spec(3))
    for s in summary["sites"].values():
        for rel in s["files"]:
            assert sha256_file(out / rel) == sha256_file(tmp_path / "again" / rel), rel
    assert again["oracle_c_index"] == summary["oracle_c_index"]
    other = generate_cohort(tmp_path / "other", seed=4, spec=mini_spec(4, n_patients=1))
    a = _rows(out / "site_A" / "clinical.csv")
    b = _rows(tmp_path / "other" / "site_A" / "clinical.csv")
    assert a[0]["time"] != b[0]["time"]
    assert other["fingerprint"] != summary["fingerprint"]


def test_rerun_reuses_files(mini_cohort):
    out, summary = mini_cohort
    slide = out / summary["sites"]["A"]["files"][0]
    before = slide.stat().st_mtime_ns
    again = generate_cohort(out, seed=3, spec=mini_spec(3))
    assert again["fingerprint"] == summary["fingerprint"]
    assert slide.stat().st_mtime_ns == before


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_slides_open_with_both_backends(mini_cohort, backend):
    from pathfl.slide import open_slide

    out, summary = mini_cohort
    for s in summary["sites"].values():
        for rel in (f for f in s["files"] if "/slides/" in f):
            with open_slide(out / rel, backend=backend) as sl:
                assert sl.mpp == pytest.approx(s["mpp"], rel=1e-3)
                assert sl.level_count >= 2
                assert sl.level_downsamples[1] == pytest.approx(2, rel=0.01)
                px = sl.read_region_array((0, 0), sl.level_count - 1, (32, 32))
                assert px.shape == (32, 32, 3)
                if s["format"] == "svs":
                    assert "aperio" in sl.vendor.lower()


def test_planted_phenotype_is_realised_and_visible():
    rng = np.random.default_rng(0)
    r = render_tissue((500, 400), mpp=0.5, phenotype_fraction=0.4, stain=StainStyle(), rng=rng)
    assert r.phenotype_fraction == pytest.approx(0.4, abs=0.06)
    assert r.tissue_mask.any() and r.phenotype_mask.any()
    assert not (r.phenotype_mask & ~r.tissue_mask).any()
    # the phenotype is darker and bluer than the rest of the tissue (what a CNN can pick up)
    import cv2

    small = cv2.resize(r.rgb, r.tissue_mask.shape[::-1], interpolation=cv2.INTER_AREA)
    pheno = small[r.phenotype_mask].astype(float).mean(0)
    stroma = small[r.tissue_mask & ~r.phenotype_mask].astype(float).mean(0)
    assert pheno.sum() < stroma.sum() - 60
    assert pheno[0] < stroma[0] - 40  # less red: haematoxylin
    blank = render_tissue(
        (300, 300),
        mpp=0.5,
        phenotype_fraction=0.0,
        stain=StainStyle(),
        rng=np.random.default_rng(1),
    )
    assert blank.phenotype_fraction == 0.0


def test_hazard_drives_survival_and_oracle_is_high():
    """Large simulated sample: the true risk orders survival (oracle C well above 0.5) and a
    Cox model on the phenotype fraction recovers the planted log-hazard ratio."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    spec = demo_spec()
    rng = np.random.default_rng(0)
    frac = rng.uniform(0, 0.7, size=1500)
    risk = spec.beta * (frac - 0.3)
    t, e = simulate_survival(risk, spec=spec, rng=rng)
    assert 0.3 < e.mean() < 0.9
    assert harrell_c(e, t, risk) > 0.75
    assert harrell_c(e, t, -risk) < 0.25
    cox = CoxPHSurvivalAnalysis().fit(frac[:, None], Surv.from_arrays(e.astype(bool), t))
    assert cox.coef_[0] == pytest.approx(spec.beta, rel=0.12)


def test_oracle_c_index_counts_match_sksurv_with_ties():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(1)
    t = rng.exponential(10, 60)
    e = rng.random(60) < 0.6
    r = rng.normal(size=60)
    r[:5] = r[5]  # some tied risks
    t[10:14] = t[14]  # and tied times (events and censored)
    conc, comp, tied = concordance_counts(e.astype(int), t, r)
    ref = concordance_index_censored(e, t, r)
    assert (conc, tied, comp) == (ref[1], ref[3], ref[1] + ref[2] + ref[3])
    assert harrell_c(e, t, r) == pytest.approx(ref[0])
