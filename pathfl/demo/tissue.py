"""Procedural H&E-like tissue for the demo cohort.

Tissue is painted in optical-density (OD) space with two stains (haematoxylin, eosin) and
converted to RGB with Beer–Lambert (``I = I0 · 10^-OD``), so a site's stain shift is a change
of stain vectors and concentrations, as on a real scanner. Everything is drawn in physical
units (µm) at the slide's native resolution, so a 0.25 µm/px site really has twice the pixels.

Classes of tissue:
- background (white glass) with some blank holes (tears) inside the tissue;
- stroma: pink fibres, sparse elongated fibroblast nuclei and a few lymphocytes;
- the planted *high-risk phenotype*: sheets of crowded, large, pleomorphic, hyperchromatic
  nuclei with pale cytoplasm — a texture and colour an ImageNet CNN separates easily;
- optional pen marks (blue or green ink) near the tissue edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

COARSE_UM_PER_PX = 4.0  # resolution of the smooth fields and of the ground-truth masks
RENDER_MPP = 0.5  # tissue is drawn at this resolution or coarser

# Ruifrok & Johnston stain OD vectors (R, G, B), normalised below.
H_VECTOR = (0.650, 0.704, 0.286)
E_VECTOR = (0.072, 0.990, 0.105)
INK_VECTORS = {"blue": (0.85, 0.55, 0.08), "green": (0.85, 0.25, 0.75)}


@dataclass(frozen=True)
class StainStyle:
    """A site's staining and scanner colour: stain vectors, concentrations, glass colour."""

    h_vector: tuple[float, float, float] = H_VECTOR
    e_vector: tuple[float, float, float] = E_VECTOR
    h_scale: float = 1.0
    e_scale: float = 1.0
    background_rgb: tuple[int, int, int] = (243, 242, 240)


@dataclass(frozen=True)
class TissueParams:
    """Physical parameters of the procedural tissue (µm, nuclei per µm²)."""

    stroma_nuclei_per_um2: float = 1 / 450
    lymphocytes_per_um2: float = 1 / 2500
    tumour_nuclei_per_um2: float = 1 / 55
    tumour_nucleus_um: tuple[float, float] = (3.0, 5.5)  # semi-axis range
    hole_threshold: float = 2.3  # higher = fewer tears
    pen_probability: float = 0.35
    blur_px: float = 0.6
    noise_sd: float = 3.0


@dataclass
class RenderedTissue:
    rgb: np.ndarray  # (H, W, 3) uint8 at native mpp
    tissue_mask: np.ndarray  # (h, w) bool at COARSE_UM_PER_PX
    phenotype_mask: np.ndarray  # (h, w) bool at COARSE_UM_PER_PX
    phenotype_fraction: float  # phenotype area / tissue area, measured at native resolution
    has_pen: bool
    info: dict[str, float] = field(default_factory=dict)


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    n = rng.standard_normal(shape, dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma_px, 0.3), borderType=cv2.BORDER_REFLECT)
    sd = float(n.std())
    return (n - float(n.mean())) / (sd if sd > 0 else 1.0)


def _fibre_noise(shape: tuple[int, int], mpp: float, rng: np.random.Generator) -> np.ndarray:
    """Oriented streaks (collagen fibres): anisotropic blur of noise, then a random rotation."""
    h, w = shape
    side = math.ceil(math.hypot(h, w)) + 2
    n = rng.standard_normal((side, side), dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=8.0 / mpp, sigmaY=0.9 / mpp)
    angle = float(rng.uniform(0, 180))
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    n = cv2.warpAffine(n, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (side - h) // 2, (side - w) // 2
    n = n[y0 : y0 + h, x0 : x0 + w]
    return (n - n.mean()) / (n.std() + 1e-6)


def coarse_fields(
    size_um: tuple[float, float],
    phenotype_fraction: float,
    rng: np.random.Generator,
    params: TissueParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue and phenotype *fields* at COARSE_UM_PER_PX. Tissue where ``tissue > 0``;
    phenotype where ``pheno > 0`` (inside the tissue), thresholded so that the phenotype covers
    ``phenotype_fraction`` of the tissue area. Returns (tissue, pheno, holes) fields."""
    w_um, h_um = size_um
    hc, wc = round(h_um / COARSE_UM_PER_PX), round(w_um / COARSE_UM_PER_PX)
    yy, xx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    env = np.zeros((hc, wc), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.35, 0.65) * wc, rng.uniform(0.35, 0.65) * hc
        rx, ry = rng.uniform(0.26, 0.36) * wc, rng.uniform(0.26, 0.36) * hc
        env = np.maximum(env, np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)))
    # keep a margin of glass around the tissue: fade the envelope out near the border
    margin = np.minimum(np.minimum(xx, wc - 1 - xx) / wc, np.minimum(yy, hc - 1 - yy) / hc)
    env *= np.clip(margin / 0.15, 0, 1) ** 2
    tissue = env + 0.2 * smooth_noise((hc, wc), 100 / COARSE_UM_PER_PX, rng) - 0.4
    holes = smooth_noise((hc, wc), 10 / COARSE_UM_PER_PX, rng) - params.hole_threshold
    inside = (tissue > 0) & (holes <= 0)
    pf = smooth_noise((hc, wc), 55 / COARSE_UM_PER_PX, rng)
    if phenotype_fraction <= 0 or not inside.any():
        thr = np.inf
    elif phenotype_fraction >= 1:
        thr = -np.inf
    else:
        thr = float(np.quantile(pf[inside], 1 - phenotype_fraction))
    return tissue, pf - thr, holes


def _upsample(f: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(f, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _draw_nuclei(
    canvas: np.ndarray,
    mask: np.ndarray,
    density_per_um2: float,
    semi_um: tuple[float, float],
    aspect: tuple[float, float],
    od: tuple[float, float],
    mpp: float,
    rng: np.random.Generator,
    angle_deg: float | None = None,
) -> int:
    """Paint filled ellipses (nuclei) of random size/orientation into ``canvas`` (an OD map),
    centred on random points of ``mask``. Returns how many were drawn."""
    area_um2 = float(mask.sum()) * mpp * mpp
    n = int(rng.poisson(area_um2 * density_per_um2))
    if n == 0:
        return 0
    ys, xs = np.nonzero(mask)
    idx = rng.integers(0, len(ys), size=n)
    a_um = rng.uniform(*semi_um, size=n)
    asp = rng.uniform(*aspect, size=n)
    ods = rng.uniform(*od, size=n)
    if angle_deg is None:
        angles = rng.uniform(0, 180, size=n)
    else:
        angles = angle_deg + rng.normal(0, 15, size=n)
    for y, x, a, r, v, ang in zip(ys[idx], xs[idx], a_um, asp, ods, angles, strict=True):
        ax = (max(1, round(a / mpp)), max(1, round(a / r / mpp)))
        cv2.ellipse(canvas, (int(x), int(y)), ax, float(ang), 0, 360, float(v), -1, cv2.LINE_AA)
    return n


def _pen_mark(shape: tuple[int, int], mpp: float, rng: np.random.Generator) -> np.ndarray:
    """A thick, slightly wavy ink stroke along one side of the slide."""
    h, w = shape
    ink = np.zeros(shape, np.float32)
    t = np.linspace(0, 1, 40)
    side = int(rng.integers(0, 4))
    off = rng.uniform(0.05, 0.14)
    wob = 0.03 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform(0, 1)))
    start, stop = rng.uniform(0.05, 0.3), rng.uniform(0.6, 0.95)
    s = start + (stop - start) * t
    if side == 0:
        pts = np.stack([s * w, (off + wob) * h], 1)
    elif side == 1:
        pts = np.stack([s * w, (1 - off + wob) * h], 1)
    elif side == 2:
        pts = np.stack([(off + wob) * w, s * h], 1)
    else:
        pts = np.stack([(1 - off + wob) * w, s * h], 1)
    thickness = max(2, round(rng.uniform(15, 30) / mpp))
    cv2.polylines(ink, [pts.astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    return ink * float(rng.uniform(0.5, 0.9))


def render_tissue(
    size_um: tuple[float, float],
    *,
    mpp: float,
    phenotype_fraction: float,
    stain: StainStyle,
    rng: np.random.Generator,
    params: TissueParams | None = None,
) -> RenderedTissue:
    """Render one slide's tissue at ``mpp`` µm/px. ``size_um`` is (width, height).

    Tissue is drawn at ``max(mpp, RENDER_MPP)``; finer slides (0.25 µm/px) are upsampled from
    it, so their detail beyond 0.5 µm/px is interpolated (the pipeline tiles at 0.5 µm/px)."""
    params = params or TissueParams()
    tissue_f, pheno_f, holes_f = coarse_fields(size_um, phenotype_fraction, rng, params)
    r_mpp = max(mpp, RENDER_MPP)
    shape = (round(size_um[1] / r_mpp), round(size_um[0] / r_mpp))
    tissue = (_upsample(tissue_f, shape) > 0) & (_upsample(holes_f, shape) <= 0)
    pheno = tissue & (_upsample(pheno_f, shape) > 0)
    h_conc, e_conc, n_tumour = _stain_concentrations(tissue, pheno, r_mpp, rng, params)
    has_pen = bool(rng.random() < params.pen_probability)
    rgb8 = _to_rgb(h_conc, e_conc, stain, r_mpp, rng, params, has_pen=has_pen)
    if r_mpp != mpp:
        out_wh = (round(size_um[0] / mpp), round(size_um[1] / mpp))
        rgb8 = cv2.resize(rgb8, out_wh, interpolation=cv2.INTER_CUBIC)

    n_tissue = int(tissue.sum())
    fraction = float(pheno.sum()) / n_tissue if n_tissue else 0.0
    coarse_shape = tissue_f.shape
    tissue_c = _downsample_mask(tissue, coarse_shape)
    pheno_c = _downsample_mask(pheno, coarse_shape)
    info = {"tissue_um2": n_tissue * r_mpp * r_mpp, "n_tumour_nuclei": float(n_tumour)}
    return RenderedTissue(rgb8, tissue_c, pheno_c, fraction, has_pen, info)


def _stain_concentrations(
    tissue: np.ndarray,
    pheno: np.ndarray,
    r_mpp: float,
    rng: np.random.Generator,
    params: TissueParams,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Haematoxylin and eosin concentrations of stroma and phenotype, with their nuclei
    drawn in; returns ``(h_conc, e_conc, number of tumour nuclei)``."""
    shape = tissue.shape
    stroma = tissue & ~pheno
    fine = smooth_noise(shape, 0.7 / r_mpp, rng)
    e_conc = np.zeros(shape, np.float32)
    e_conc[stroma] = 0.27 + 0.09 * _fibre_noise(shape, r_mpp, rng)[stroma]
    e_conc[pheno] = 0.13 + 0.03 * fine[pheno]
    h_conc = np.zeros(shape, np.float32)
    h_conc[stroma] = 0.035
    h_conc[pheno] = 0.14 + 0.03 * fine[pheno]

    nuclei = np.zeros(shape, np.float32)
    _draw_nuclei(
        nuclei,
        stroma,
        params.stroma_nuclei_per_um2,
        (3.5, 6.0),
        (2.5, 4.0),
        (0.45, 0.75),
        r_mpp,
        rng,
        angle_deg=float(rng.uniform(0, 180)),
    )
    _draw_nuclei(
        nuclei, stroma, params.lymphocytes_per_um2, (2.2, 3.0), (1.0, 1.2), (1.0, 1.3), r_mpp, rng
    )
    n_tumour = _draw_nuclei(
        nuclei,
        pheno,
        params.tumour_nuclei_per_um2,
        params.tumour_nucleus_um,
        (1.0, 1.6),
        (0.85, 1.5),
        r_mpp,
        rng,
    )
    nuclei_on = nuclei > 0.2
    nuclei *= 1.0 + 0.22 * fine  # chromatin texture
    np.maximum(h_conc, nuclei, out=h_conc, where=tissue)
    e_conc[nuclei_on] *= 0.4
    return h_conc, e_conc, n_tumour


def _to_rgb(
    h_conc: np.ndarray,
    e_conc: np.ndarray,
    stain: StainStyle,
    r_mpp: float,
    rng: np.random.Generator,
    params: TissueParams,
    *,
    has_pen: bool,
) -> np.ndarray:
    """Beer–Lambert RGB (uint8) of the stain concentrations under ``stain``, with a pen
    stroke when ``has_pen``, blur and scanner noise."""
    shape = h_conc.shape
    ink = None
    if has_pen:
        colour = "blue" if rng.random() < 0.5 else "green"
        ink = (_pen_mark(shape, r_mpp, rng), _unit(INK_VECTORS[colour]))
    hv = stain.h_scale * _unit(stain.h_vector)
    ev = stain.e_scale * _unit(stain.e_vector)
    noise = params.noise_sd * rng.standard_normal(shape, dtype=np.float32)
    channels = []
    for c in range(3):
        od = h_conc * float(hv[c]) + e_conc * float(ev[c])
        if ink is not None:
            od += ink[0] * float(ink[1][c])
        od *= np.float32(-math.log(10.0))
        ch = np.exp(od, out=od)
        ch *= float(stain.background_rgb[c])
        if params.blur_px > 0:
            ch = cv2.GaussianBlur(ch, (0, 0), params.blur_px)
        ch += noise
        channels.append(ch)
    return cv2.convertScaleAbs(cv2.merge(channels))  # saturating cast to uint8


def _downsample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return m >= 0.5
