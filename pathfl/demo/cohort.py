"""The embedded demo cohort: three simulated hospitals, real pyramidal slide files, a planted
prognostic phenotype and survival times drawn from a known hazard.

Ground truth. For patient *i* let ``F_i`` be the fraction of their tissue area (all their
slides together) covered by the high-risk phenotype, measured on the rendered pixels. The
hazard is ``h_i(t) = λ0 · exp(β · (F_i − 0.3))`` (exponential survival, time in months);
censoring is independent, uniform on ``[censor_min, censor_max]`` months. The *oracle* risk is
``β · (F_i − 0.3)`` itself, so the oracle C-index is the best any model can do on this sample.

Site effects: stain vectors/concentrations and glass colour, scanner resolution (0.25 vs
0.5 µm/px, i.e. 40x vs 20x), file format (Aperio SVS vs generic tiled TIFF), JPEG quality and
case mix (the mean phenotype fraction differs by site, the biology — β, λ0 — does not).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathfl.demo.tissue import COARSE_UM_PER_PX, StainStyle, TissueParams, render_tissue
from pathfl.demo.wsi_writer import write_slide
from pathfl.interrupts import WorkerPool
from pathfl.io import atomic_path, sha256_json, write_json_atomic
from pathfl.survival.metrics import c_index_from_counts, concordance_counts, harrell_c

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
CLINICAL_COLUMNS = ("patient_id", "slide_id", "time", "event", "site")
TRUTH_COLUMNS = (
    "patient_id",
    "slide_id",
    "site",
    "slide_phenotype_fraction",
    "patient_phenotype_fraction",
    "true_risk",
    "tissue_um2",
    "has_pen_mark",
    "mpp",
    "mask",
    "mask_um_per_px",
)


@dataclass(frozen=True)
class SiteSpec:
    """One simulated hospital."""

    name: str
    n_patients: int
    mpp: float
    fmt: str  # "svs" | "tiff"
    jpeg_quality: int
    stain: StainStyle
    phenotype_mean: float  # case mix: mean patient phenotype fraction
    two_slide_prob: float = 0.5


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines the cohort (with ``seed``)."""

    sites: tuple[SiteSpec, ...]
    slide_w_um: tuple[float, float] = (900.0, 1100.0)
    slide_h_um: tuple[float, float] = (700.0, 850.0)
    beta: float = 8.0
    baseline_median_months: float = 48.0
    censor_min_months: float = 6.0
    censor_max_months: float = 120.0
    max_phenotype_fraction: float = 0.7
    case_mix_concentration: float = 2.0  # Beta(κm, κ(1−m)) of patient fractions
    tissue: TissueParams = field(default_factory=TissueParams)
    seed: int = 0

    def fingerprint(self) -> str:
        return sha256_json({"spec": asdict(self), "generator": GENERATOR_VERSION})


# Stain styles: site A standard, B eosin-heavy and bluer haematoxylin, C purple and faded.
STAIN_A = StainStyle()
STAIN_B = StainStyle(h_vector=(0.55, 0.72, 0.42), e_scale=1.25, background_rgb=(246, 244, 246))
STAIN_C = StainStyle(
    h_vector=(0.70, 0.68, 0.22),
    e_vector=(0.12, 0.95, 0.25),
    h_scale=1.2,
    e_scale=0.8,
    background_rgb=(238, 236, 226),
)


def demo_spec(*, tiny: bool = False, seed: int = 0) -> CohortSpec:
    """The cohort `pathfl demo` uses: 3 sites × 32 patients, about a third of them with two
    slides (``tiny``: 3 × 12 patients, one small slide each)."""
    n = 12 if tiny else 32
    two = 0.0 if tiny else 0.35
    sites = (
        SiteSpec("A", n, 0.25, "svs", 90, STAIN_A, 0.22, two),
        SiteSpec("B", n, 0.5, "tiff", 80, STAIN_B, 0.30, two),
        SiteSpec("C", n, 0.5, "svs", 55, STAIN_C, 0.38, two),
    )
    if tiny:
        return CohortSpec(sites, slide_w_um=(480, 540), slide_h_um=(400, 440), seed=seed)
    return CohortSpec(sites, seed=seed)


@dataclass
class SlideJob:
    site: str
    patient_id: str
    slide_id: str
    path: Path
    mask_path: Path
    size_um: tuple[float, float]
    target_fraction: float
    mpp: float
    fmt: str
    jpeg_quality: int
    stain: StainStyle
    tissue: TissueParams
    seed: tuple[int, ...]


def _render_one(job: SlideJob) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
    r = render_tissue(
        job.size_um,
        mpp=job.mpp,
        phenotype_fraction=job.target_fraction,
        stain=job.stain,
        rng=rng,
        params=job.tissue,
    )
    write_slide(job.path, r.rgb, mpp=job.mpp, fmt=job.fmt, jpeg_quality=job.jpeg_quality)
    # ground-truth mask: 0 glass, 128 ordinary tissue, 255 high-risk phenotype
    mask = np.where(r.phenotype_mask, 255, np.where(r.tissue_mask, 128, 0)).astype(np.uint8)
    ok, png = cv2.imencode(".png", mask)
    if not ok:
        raise OSError(f"{job.mask_path}: could not encode the mask PNG")
    with atomic_path(job.mask_path) as tmp:
        tmp.write_bytes(png.tobytes())
    return {
        "slide_id": job.slide_id,
        "fraction": r.phenotype_fraction,
        "tissue_um2": r.info["tissue_um2"],
        "has_pen": r.has_pen,
    }


def _plan(spec: CohortSpec, root: Path) -> tuple[list[SlideJob], dict[str, dict[str, Any]]]:
    """Draw every random choice that does not depend on pixels: patients, slides, sizes."""
    jobs: list[SlideJob] = []
    patients: dict[str, dict[str, Any]] = {}
    for si, site in enumerate(spec.sites):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1, si]))
        m = site.phenotype_mean / spec.max_phenotype_fraction
        kappa = spec.case_mix_concentration
        for pi in range(site.n_patients):
            pid = f"site{site.name}-p{pi + 1:03d}"
            f_patient = spec.max_phenotype_fraction * rng.beta(kappa * m, kappa * (1 - m))
            n_slides = 2 if rng.random() < site.two_slide_prob else 1
            patients[pid] = {"site": site.name, "slides": [], "target": float(f_patient)}
            for k in range(n_slides):
                sid = f"{pid}-s{k + 1}"
                f_slide = float(np.clip(f_patient + rng.normal(0, 0.04), 0.0, 0.9))
                size = (float(rng.uniform(*spec.slide_w_um)), float(rng.uniform(*spec.slide_h_um)))
                site_dir = root / f"site_{site.name}"
                jobs.append(
                    SlideJob(
                        site.name,
                        pid,
                        sid,
                        site_dir / "slides" / f"{sid}.{site.fmt}",
                        site_dir / "masks" / f"{sid}.png",
                        size,
                        f_slide,
                        site.mpp,
                        site.fmt,
                        site.jpeg_quality,
                        site.stain,
                        spec.tissue,
                        (spec.seed, 2, si, pi, k),
                    )
                )
                patients[pid]["slides"].append(sid)
    return jobs, patients


def simulate_survival(
    risk: np.ndarray, *, spec: CohortSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Exponential event times with hazard ``λ0·exp(risk)``, uniform censoring.
    Returns (time in months, event 0/1)."""
    lam0 = math.log(2) / spec.baseline_median_months
    t_event = rng.exponential(1.0, size=len(risk)) / (lam0 * np.exp(risk))
    t_cens = rng.uniform(spec.censor_min_months, spec.censor_max_months, size=len(risk))
    event = (t_event <= t_cens).astype(int)
    return np.minimum(t_event, t_cens), event


def generate_cohort(
    out_dir: str | Path,
    *,
    tiny: bool = False,
    seed: int = 0,
    workers: int = 1,
    spec: CohortSpec | None = None,
) -> dict[str, Any]:
    """Write the demo cohort under ``out_dir`` and return its summary (also ``cohort.json``).
    Reruns with the same spec and seed reuse the existing files."""
    out = Path(out_dir)
    spec = spec or demo_spec(tiny=tiny, seed=seed)
    spec = replace(spec, seed=seed) if spec.seed != seed else spec
    summary_path = out / "cohort.json"
    fp = spec.fingerprint()
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        if old.get("fingerprint") == fp and all(
            (out / p).is_file() for s in old["sites"].values() for p in s["files"]
        ):
            log.info("demo cohort in %s is up to date (fingerprint %s)", out, fp[:12])
            return old
    t0 = time.perf_counter()
    jobs, patients = _plan(spec, out)
    log.info(
        "rendering %d slides for %d patients with %d worker(s)", len(jobs), len(patients), workers
    )
    if workers > 1:
        with WorkerPool(workers, context=None) as ex:  # stopped at once on Ctrl-C
            results = list(ex.map(_render_one, jobs))
    else:
        results = [_render_one(j) for j in jobs]
    by_slide = {r["slide_id"]: r for r in results}
    summary = _write_tables(out, spec, jobs, patients, by_slide)
    summary.update(
        fingerprint=fp,
        seed=seed,
        tiny=tiny,
        generator_version=GENERATOR_VERSION,
        seconds=round(time.perf_counter() - t0, 2),
    )
    write_json_atomic(summary_path, summary)
    return summary


def _patient_risk(
    spec: CohortSpec, patients: dict[str, dict[str, Any]], by_slide: dict[str, dict[str, Any]]
) -> np.ndarray:
    """Set each patient's measured phenotype fraction (tissue-area-weighted mean of their
    slides); return the true risk ``β·(F − 0.3)`` in ``patients`` order."""
    for pid in patients:
        rs = [by_slide[s] for s in patients[pid]["slides"]]
        area = sum(r["tissue_um2"] for r in rs)
        patients[pid]["fraction"] = sum(r["fraction"] * r["tissue_um2"] for r in rs) / area
    return np.array([spec.beta * (p["fraction"] - 0.3) for p in patients.values()])


def _site_rows(
    site: SiteSpec,
    idx: list[int],
    pids: list[str],
    patients: dict[str, dict[str, Any]],
    job_of: dict[str, SlideJob],
    by_slide: dict[str, dict[str, Any]],
    outcome: tuple[np.ndarray, np.ndarray, np.ndarray],
    sdir: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One site's ``clinical.csv`` and ``truth.csv`` rows (one per slide)."""
    t, e, risk = outcome
    clin, truth = [], []
    for i in idx:
        pid = pids[i]
        for sid in patients[pid]["slides"]:
            j, r = job_of[sid], by_slide[sid]
            clin.append(
                {
                    "patient_id": pid,
                    "slide_id": sid,
                    "time": f"{t[i]:.3f}",
                    "event": int(e[i]),
                    "site": site.name,
                }
            )
            truth.append(
                {
                    "patient_id": pid,
                    "slide_id": sid,
                    "site": site.name,
                    "slide_phenotype_fraction": f"{r['fraction']:.4f}",
                    "patient_phenotype_fraction": f"{patients[pid]['fraction']:.4f}",
                    "true_risk": f"{risk[i]:.4f}",
                    "tissue_um2": f"{r['tissue_um2']:.0f}",
                    "has_pen_mark": int(r["has_pen"]),
                    "mpp": j.mpp,
                    "mask": str(j.mask_path.relative_to(sdir)),
                    "mask_um_per_px": COARSE_UM_PER_PX,
                }
            )
    return clin, truth


def _write_tables(
    out: Path,
    spec: CohortSpec,
    jobs: list[SlideJob],
    patients: dict[str, dict[str, Any]],
    by_slide: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Draw the survival outcomes; write each site's ``clinical.csv`` and ``truth.csv``;
    return the cohort summary (counts and oracle C-indices)."""
    job_of = {j.slide_id: j for j in jobs}
    pids = list(patients)
    risk = _patient_risk(spec, patients, by_slide)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3]))
    t, e = simulate_survival(risk, spec=spec, rng=rng)
    sites_out: dict[str, Any] = {}
    all_pairs = [0, 0, 0]
    for site in spec.sites:
        sdir = out / f"site_{site.name}"
        idx = [i for i, p in enumerate(pids) if patients[p]["site"] == site.name]
        clin, truth = _site_rows(site, idx, pids, patients, job_of, by_slide, (t, e, risk), sdir)
        _write_csv(sdir / "clinical.csv", CLINICAL_COLUMNS, clin)
        _write_csv(sdir / "truth.csv", TRUTH_COLUMNS, truth)
        counts = concordance_counts(e[idx], t[idx], risk[idx])
        all_pairs = [a + b for a, b in zip(all_pairs, counts, strict=True)]
        files = [str(j.path.relative_to(out)) for j in jobs if j.site == site.name]
        files += [str(j.mask_path.relative_to(out)) for j in jobs if j.site == site.name]
        files += [f"site_{site.name}/clinical.csv", f"site_{site.name}/truth.csv"]
        sites_out[site.name] = {
            "dir": f"site_{site.name}",
            "n_patients": len(idx),
            "n_slides": sum(len(patients[pids[i]]["slides"]) for i in idx),
            "n_events": int(e[idx].sum()),
            "mpp": site.mpp,
            "format": site.fmt,
            "jpeg_quality": site.jpeg_quality,
            "mean_phenotype_fraction": float(np.mean([patients[pids[i]]["fraction"] for i in idx])),
            "oracle_c_index": harrell_c(e[idx], t[idx], risk[idx]),
            "comparable_pairs": counts[1],
            "files": files,
        }
    conc, comp, tied = all_pairs
    return {
        "sites": sites_out,
        "n_patients": len(pids),
        "n_slides": len(jobs),
        "n_events": int(e.sum()),
        "oracle_c_index": harrell_c(e, t, risk),
        "oracle_c_index_within_site": c_index_from_counts(conc, comp, tied),
        "comparable_pairs_within_site": comp,
        "hazard": {
            "beta": spec.beta,
            "centre": 0.3,
            "baseline_median_months": spec.baseline_median_months,
            "censoring_months": [spec.censor_min_months, spec.censor_max_months],
        },
    }


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
