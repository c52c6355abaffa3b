"""Stain normalisation (Macenko, Reinhard) and HED-jitter augmentation as batched torch ops on
uint8 tile batches ``(B, 3, H, W)``, on whatever device the batch is on (the encoder's), before
the encoder's mean/std normalisation.

Own implementation (not ``torchstain``, which works on one image at a time in a Python loop):
every tile of a batch is processed at once; BENCHMARKS.md ("Stain normalisation") compares speed
and fidelity with torchstain and scikit-image.

* **Macenko** (ISBI 2009): optical density ``OD = -ln((I + 1) / Io)``; the pixels with every
  channel's OD ≥ ``beta`` are tissue; the plane of the two main eigenvectors of their OD
  covariance; the stain vectors at the ``alpha``-th and ``100 - alpha``-th percentile of the
  angle in that plane (hematoxylin = the one with the larger red OD); concentrations by least
  squares; each stain's 99th-percentile concentration scaled to the reference's; image rebuilt
  with the reference stain matrix. A tile with fewer than :data:`MIN_TISSUE_FRACTION` tissue
  pixels is left unchanged (no stain to estimate).
* **Reinhard** (2001): per tile, each CIE-L*a*b* channel standardised to the reference's mean
  and (population) standard deviation; sRGB/D65 conversions as scikit-image's.
* **HED jitter** (Tellez et al. 2018): Ruifrok–Johnston colour deconvolution into hematoxylin,
  eosin and DAB; each channel's concentration scaled by ``U(1 - sigma, 1 + sigma)`` and shifted
  by ``U(-bias, bias)`` (OD units), per tile, from a seeded generator; recomposed. With
  ``sigma = bias = 0`` it is the identity.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

#: Macenko defaults of the original code (transmitted light, angle percentile, OD threshold)
MACENKO_IO, MACENKO_ALPHA, MACENKO_BETA = 240.0, 1.0, 0.15
#: a tile with fewer tissue pixels than this fraction is passed through unchanged (Macenko)
MIN_TISSUE_FRACTION = 0.01
#: percentile of the concentrations taken as a stain's maximum
MAX_CONC_PERCENTILE = 99.0

# sRGB (D65) -> XYZ, and the D65 2° white point (scikit-image's constants)
_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
            (0.019334, 0.119193, 0.950227))  # fmt: skip
_WHITE = (0.95047, 1.0, 1.08883)
# Ruifrok & Johnston stain OD vectors (rows: hematoxylin, eosin, DAB), as scikit-image's
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → float32 (B, 3, N)."""
    return x.reshape(x.shape[0], 3, -1).float()


def _to_uint8(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8).reshape(shape)


def quantile_nearest(x: torch.Tensor, q: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per row of ``x`` (..., N), the ``q``-quantile (0..1, nearest rank, as numpy's
    ``method="nearest"``) of the entries where ``mask`` is true (all when None)."""
    if mask is None:
        n = torch.full(x.shape[:-1], x.shape[-1], device=x.device)
        s = x.sort(dim=-1).values
    else:
        n = mask.sum(-1)
        s = torch.where(mask, x, torch.full_like(x, float("inf"))).sort(dim=-1).values
    idx = torch.round(q * (n - 1).clamp(min=0).float()).long().unsqueeze(-1)
    return s.gather(-1, idx).squeeze(-1)


# ---------------------------------------------------------------------------------- Macenko
def optical_density(x: torch.Tensor, io: float = MACENKO_IO) -> torch.Tensor:
    """``-ln((I + 1) / io)`` of (B, 3, N) intensities."""
    return -torch.log((x + 1.0) / io)


def macenko_stains(
    od: torch.Tensor, *, alpha: float = MACENKO_ALPHA, beta: float = MACENKO_BETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stain matrices (B, 3, 2) (columns: hematoxylin, eosin; unit OD vectors) of OD pixels
    (B, 3, N), and a (B,) bool: whether the tile had enough tissue pixels to estimate them."""
    mask = (od >= beta).all(dim=1)  # (B, N)
    n = mask.sum(-1)
    w = mask.unsqueeze(1).float()
    mean = (od * w).sum(-1) / n.clamp(min=1).unsqueeze(-1)
    xc = (od - mean.unsqueeze(-1)) * w
    cov = xc @ xc.transpose(1, 2) / (n - 1).clamp(min=1).view(-1, 1, 1)
    _, vecs = torch.linalg.eigh(cov.double())  # ascending eigenvalues
    v = vecs[:, :, 1:3].float()  # the plane of the two largest
    # the sign of an eigenvector is arbitrary: point both towards the mean OD (positive), so
    # the angles of the tissue pixels never straddle ±pi
    sign = torch.sign((v * mean.unsqueeze(-1)).sum(1, keepdim=True))
    v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
    t = v.transpose(1, 2) @ od  # (B, 2, N)
    phi = torch.atan2(t[:, 1], t[:, 0])
    lo = quantile_nearest(phi, alpha / 100.0, mask)
    hi = quantile_nearest(phi, 1.0 - alpha / 100.0, mask)
    v_lo = (v @ torch.stack([lo.cos(), lo.sin()], -1).unsqueeze(-1)).squeeze(-1)  # (B, 3)
    v_hi = (v @ torch.stack([hi.cos(), hi.sin()], -1).unsqueeze(-1)).squeeze(-1)
    h_first = (v_lo[:, 0] > v_hi[:, 0]).unsqueeze(-1)
    he = torch.stack([torch.where(h_first, v_lo, v_hi), torch.where(h_first, v_hi, v_lo)], -1)
    ok = (n >= max(3, int(MIN_TISSUE_FRACTION * od.shape[-1]))) & torch.isfinite(he).all((1, 2))
    return he, ok


def concentrations(od: torch.Tensor, he: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations (B, 2, N) of OD pixels (B, 3, N)."""
    return torch.linalg.pinv(he) @ od


def macenko_fit(
    x: torch.Tensor, *, io: float = MACENKO_IO, alpha: float = MACENKO_ALPHA,
    beta: float = MACENKO_BETA,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Stain matrix (3, 2) and 99th-percentile concentrations (2,) of the pixels of ``x``
    (uint8 (B, 3, H, W), taken together as one image). Raises ``ValueError`` when too few
    pixels are tissue."""
    pixels = _flat(x).permute(1, 0, 2).reshape(1, 3, -1)
    od = optical_density(pixels, io)
    he, ok = macenko_stains(od, alpha=alpha, beta=beta)
    if not bool(ok[0]):
        raise ValueError("too few tissue pixels to estimate a stain matrix")
    conc = concentrations(od, he)
    return he[0], quantile_nearest(conc[0], MAX_CONC_PERCENTILE / 100.0)


def macenko_normalise(
    x: torch.Tensor, he_ref: torch.Tensor, max_ref: torch.Tensor, *, io: float = MACENKO_IO,
    alpha: float = MACENKO_ALPHA, beta: float = MACENKO_BETA,
) -> torch.Tensor:  # fmt: skip
    """Macenko-normalise uint8 tiles (B, 3, H, W) to the reference stain matrix (3, 2) and
    maximum concentrations (2,); uint8 out, same shape (tiles without tissue unchanged)."""
    if x.shape[0] == 0:
        return x
    od = optical_density(_flat(x), io)
    he, ok = macenko_stains(od, alpha=alpha, beta=beta)
    # tiles without a usable estimate get the reference matrix (their output is discarded)
    he = torch.where(ok.view(-1, 1, 1), he, he_ref.to(he))
    conc = concentrations(od, he)
    max_c = quantile_nearest(conc, MAX_CONC_PERCENTILE / 100.0)  # (B, 2)
    ok = ok & (max_c > 1e-6).all(-1)
    scale = max_ref.to(max_c).unsqueeze(0) / max_c.clamp(min=1e-6)
    out = io * torch.exp(-(he_ref.to(od) @ (conc * scale.unsqueeze(-1)))) - 1.0
    out = torch.where(ok.view(-1, 1, 1), out, _flat(x))
    return _to_uint8(out, x.shape)


# ---------------------------------------------------------------------------------- Reinhard
def _matrix(rows: tuple[tuple[float, ...], ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, device=like.device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (B, 3, N) → CIE L*a*b* (D65), as ``skimage.color.rgb2lab``."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _matrix(_RGB2XYZ, rgb) @ lin / torch.tensor(_WHITE, device=rgb.device).view(1, 3, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1
    )


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (B, 3, N) → sRGB clipped to [0, 1], as ``skimage.color.lab2rgb``."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, (fy - lab[:, 2] / 200).clamp(min=0)], 1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787)
    xyz = xyz * torch.tensor(_WHITE, device=lab.device).view(1, 3, 1)
    lin = torch.linalg.inv(_matrix(_RGB2XYZ, lab)) @ xyz
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0) ** (1 / 2.4) - 0.055, lin * 12.92)
    return rgb.clamp(0, 1)


def lab_stats(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile and channel, mean and population standard deviation (B, 3) each."""
    return lab.mean(-1), lab.std(-1, correction=0)


def reinhard_lab(x: torch.Tensor, mean_ref: torch.Tensor, std_ref: torch.Tensor) -> torch.Tensor:
    """L*a*b* (B, 3, N) of uint8 tiles (B, 3, H, W) with each tile's channel means/stds set to
    the reference's (before the conversion back to 8-bit RGB)."""
    lab = rgb_to_lab(_flat(x) / 255.0)
    mean, std = lab_stats(lab)
    z = (lab - mean.unsqueeze(-1)) / std.clamp(min=1e-6).unsqueeze(-1)
    return z * std_ref.to(lab).view(1, 3, 1) + mean_ref.to(lab).view(1, 3, 1)


def reinhard_normalise(
    x: torch.Tensor, mean_ref: torch.Tensor, std_ref: torch.Tensor
) -> torch.Tensor:
    """Reinhard-normalise uint8 tiles (B, 3, H, W) to the reference L*a*b* means/stds."""
    if x.shape[0] == 0:
        return x
    return _to_uint8(lab_to_rgb(reinhard_lab(x, mean_ref, std_ref)) * 255.0, x.shape)


def reinhard_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L*a*b* means and stds (3,) of all pixels of uint8 tiles (B, 3, H, W) taken together."""
    pixels = _flat(x).permute(1, 0, 2).reshape(1, 3, -1)
    mean, std = lab_stats(rgb_to_lab(pixels / 255.0))
    return mean[0], std[0]


# -------------------------------------------------------------------------------- HED jitter
def hed_jitter(
    x: torch.Tensor, *, sigma: float, bias: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HED-jittered copies of uint8 tiles (B, 3, H, W): per tile and stain, concentration
    ``c * U(1-sigma, 1+sigma) + U(-bias, bias)``. ``generator`` (on ``x``'s device) makes it
    deterministic."""
    if x.shape[0] == 0:
        return x
    m = _matrix(_RGB_FROM_HED, x)
    m = m / m.norm(dim=1, keepdim=True)
    od = -torch.log((_flat(x) + 1.0) / 256.0)  # (B, 3, N), in (0, ln 256]
    hed = torch.linalg.inv(m).T @ od  # od pixel = m^T @ hed
    shape = (x.shape[0], 3, 1)
    u1 = torch.rand(shape, generator=generator, device=x.device)
    u2 = torch.rand(shape, generator=generator, device=x.device)
    hed = hed * (1.0 + sigma * (2 * u1 - 1)) + bias * (2 * u2 - 1)
    out = 256.0 * torch.exp(-(m.T @ hed)) - 1.0
    return _to_uint8(out, x.shape)
