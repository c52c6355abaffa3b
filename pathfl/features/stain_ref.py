"""Stain references (what tiles are normalised to) and the per-run stain transform.

A reference is a small JSON file: ``{"method": "macenko", "stain_matrix": 3×2, "max_conc": 2}``
or ``{"method": "reinhard", "lab_mean": 3, "lab_std": 3}``, plus ``sha256`` (of the method and
its numbers, :func:`reference_sha256`, so re-saving or re-indenting the file keeps it) and
``fitted_on`` (what it was fitted on; not hashed). Every site of a federation must use the same
file: the SHA-256 is in each features file and the compat check compares it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pathfl.config import ConfigError
from pathfl.features import stain
from pathfl.features.options import STAIN_NORMS
from pathfl.io import sha256_json, write_json_atomic

logger = logging.getLogger(__name__)

NORM_METHODS = STAIN_NORMS
#: the numbers of each method's reference, hashed
REF_KEYS = {"macenko": ("stain_matrix", "max_conc"), "reinhard": ("lab_mean", "lab_std")}
REF_SHAPES = {"stain_matrix": (3, 2), "max_conc": (2,), "lab_mean": (3,), "lab_std": (3,)}


@dataclass(frozen=True)
class StainReference:
    method: str
    values: dict[str, list[Any]]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return reference_sha256(self.method, self.values)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.values, "sha256": self.sha256,
                "fitted_on": self.fitted_on}  # fmt: skip

    def tensors(self, device: torch.device) -> list[torch.Tensor]:
        return [torch.tensor(self.values[k], dtype=torch.float32, device=device)
                for k in REF_KEYS[self.method]]  # fmt: skip


def _rounded(v: Any) -> Any:
    return [_rounded(x) for x in v] if isinstance(v, list) else round(float(v), 6)


def reference_sha256(method: str, values: dict[str, Any]) -> str:
    return sha256_json({"method": method, **{k: values[k] for k in REF_KEYS[method]}})


def fit_reference(tiles: torch.Tensor, method: str, *, fitted_on: dict[str, Any]) -> StainReference:
    """A reference fitted on uint8 tiles (B, 3, H, W) taken together as one image."""
    if method == "macenko":
        he, max_c = stain.macenko_fit(tiles)
        values = {"stain_matrix": he.tolist(), "max_conc": max_c.tolist()}
    elif method == "reinhard":
        mean, std = stain.reinhard_fit(tiles)
        values = {"lab_mean": mean.tolist(), "lab_std": std.tolist()}
    else:
        raise ConfigError(f"stain method must be macenko or reinhard, got {method!r}")
    values = {k: _rounded(v) for k, v in values.items()}
    return StainReference(method, values, fitted_on)


def save_reference(ref: StainReference, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    write_json_atomic(path, ref.to_json())
    return path


def load_reference(path: str | os.PathLike[str]) -> StainReference:
    """Read and check a reference file; :class:`ConfigError` naming the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--stain-ref {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--stain-ref {path}: not a readable JSON file ({e})") from None
    method = data.get("method") if isinstance(data, dict) else None
    if method not in REF_KEYS:
        raise ConfigError(f"--stain-ref {path}: 'method' must be macenko or reinhard")
    values: dict[str, list[Any]] = {}
    for key in REF_KEYS[method]:
        try:
            t = torch.tensor(data[key], dtype=torch.float64)
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise ConfigError(f"--stain-ref {path}: missing or non-numeric {key!r}") from None
        if tuple(t.shape) != REF_SHAPES[key] or not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"--stain-ref {path}: {key!r} must be finite numbers of shape {REF_SHAPES[key]}"
            )
        values[key] = data[key]
    ref = StainReference(method, values, dict(data.get("fitted_on") or {}))
    stored = data.get("sha256")
    if stored and stored != ref.sha256:
        raise ConfigError(
            f"--stain-ref {path}: its numbers were edited (sha256 {ref.sha256[:12]} ≠ the "
            f"recorded {str(stored)[:12]}); refit it with `pathfl stain-ref fit`"
        )
    return ref


@dataclass(frozen=True)
class AugmentSpec:
    """HED jitter: ``k`` copies per tile, each stain scaled by U(1±sigma), shifted U(±bias)."""

    k: int = 0
    sigma: float = 0.05
    bias: float = 0.02
    seed: int = 0


class StainTransform:
    """What extraction does to each uint8 batch on the encoder's device: normalisation (or
    nothing) for the ``features`` dataset, plus ``k`` HED-jittered copies for ``features_aug``
    (jitter applied to the normalised tiles)."""

    def __init__(
        self, ref: StainReference | None, augment: AugmentSpec, device: torch.device
    ) -> None:
        self.ref, self.augment, self.device = ref, augment, device
        self._tensors = ref.tensors(device) if ref is not None else []

    @property
    def method(self) -> str:
        return self.ref.method if self.ref is not None else "none"

    @property
    def active(self) -> bool:
        return self.ref is not None or self.augment.k > 0

    def record(self) -> dict[str, Any]:
        """What goes into the pixel transform (and so the features fingerprint); empty when
        neither option is on (fingerprints of earlier files stay valid)."""
        out: dict[str, Any] = {}
        if self.ref is not None:
            out["stain_norm"] = {"method": self.method, "ref_sha256": self.ref.sha256}
        if self.augment.k > 0:
            a = self.augment
            out["stain_augment"] = {"method": "hed-jitter", "k": a.k, "sigma": a.sigma,
                                    "bias": a.bias, "seed": a.seed}  # fmt: skip
        return out

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.method == "macenko":
            return stain.macenko_normalise(x, *self._tensors)
        if self.method == "reinhard":
            return stain.reinhard_normalise(x, *self._tensors)
        return x

    def augmented(self, x: torch.Tensor, *, key: str, first_row: int) -> list[torch.Tensor]:
        """``k`` jittered copies of the (normalised) batch ``x``; the generator is seeded by the
        seed, the slide (``key``) and the batch's first row, so a re-run gives the same."""
        seed = int(sha256_json([self.augment.seed, key, first_row])[:15], 16)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        a = self.augment
        return [stain.hed_jitter(x, sigma=a.sigma, bias=a.bias, generator=gen) for _ in range(a.k)]


def make_stain_transform(
    *, norm: str, ref_path: Path | None, augment: AugmentSpec, device: torch.device
) -> StainTransform:
    """Check the extraction's stain options and build the transform (:class:`ConfigError`)."""
    if norm not in NORM_METHODS:
        raise ConfigError(f"--stain-norm must be one of {', '.join(NORM_METHODS)}, got {norm!r}")
    if augment.k < 0 or augment.sigma < 0 or augment.bias < 0:
        raise ConfigError("--stain-augment, --stain-sigma and --stain-bias must be >= 0")
    ref = None
    if norm != "none":
        if ref_path is None:
            raise ConfigError(
                f"--stain-norm {norm} needs --stain-ref FILE (fit one with `pathfl stain-ref fit`)"
            )
        ref = load_reference(ref_path)
        if ref.method != norm:
            raise ConfigError(
                f"--stain-ref {ref_path} is a {ref.method} reference, not a {norm} one"
            )
    elif ref_path is not None:
        logger.warning("--stain-ref %s ignored: --stain-norm is none", ref_path)
    return StainTransform(ref, augment, device)


#: at most this many pixels of the sampled tiles are used to fit a reference
MAX_FIT_PIXELS = 1 << 21


def sample_tiles(
    tiles_dir: Path,
    *,
    slides: list[str] | None = None,
    n_tiles: int = 256,
    seed: int = 0,
    slide_dir: Path | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Up to ``n_tiles`` tiles drawn at random (seeded) from the coords files of ``tiles_dir``
    (only ``slides`` when given: one slide, or a site's sample), read as extraction reads them;
    returns their pixels as one uint8 image (1, 3, 1, P), at most :data:`MAX_FIT_PIXELS`, and
    what they were drawn from."""
    import numpy as np

    from pathfl.features.dataset import TILE_OK, SlideJob, TileDataset
    from pathfl.features.plan import _tiles_manifest_paths, discover_coords, locate_slide
    from pathfl.formats.coords_h5 import read_coords, tile_geometry

    paths = discover_coords(tiles_dir)
    if slides:
        unknown = sorted(set(slides) - {p.stem for p in paths})
        if unknown:
            raise ConfigError(f"--slide {', '.join(unknown)}: no coords file in {tiles_dir}")
        paths = [p for p in paths if p.stem in set(slides)]
    manifest_paths = _tiles_manifest_paths(tiles_dir)
    loaded = [(p, *read_coords(p)) for p in paths]
    pool = [(i, t) for i, (_, coords, _) in enumerate(loaded) for t in range(len(coords))]
    if not pool:
        raise ConfigError(f"{tiles_dir}: the coords files hold no tiles")
    rng = np.random.default_rng(seed)
    picked = sorted(pool[k] for k in rng.choice(len(pool), min(n_tiles, len(pool)), False))
    jobs = []
    for i in sorted({i for i, _ in picked}):
        path, coords, attrs = loaded[i]
        geometry = tile_geometry(attrs)
        rows = [t for j, t in picked if j == i]
        mpp = attrs.get("mpp_level0")
        jobs.append(SlideJob(
            slide_id=path.stem, slide_path=locate_slide(path.stem, attrs, manifest_paths,
                                                        slide_dir),
            coords_path=path, out_path=path, coords=coords[rows], attrs=attrs,
            patch_level=geometry.patch_level, read_size=geometry.read_size,
            out_px=geometry.tile_size, backend=str(attrs.get("backend") or "auto"),
            mpp_override=float(mpp) if mpp not in (None, "", 0) else None,
        ))  # fmt: skip
    dataset = TileDataset(jobs)
    try:
        items = [dataset[k] for k in range(len(dataset))]
    finally:
        dataset.close()
    good = [img.reshape(3, -1) for img, _, _, status, _ in items if status == TILE_OK]
    if not good:
        raise ConfigError(f"{tiles_dir}: none of the {len(items)} sampled tiles could be read")
    pixels = torch.cat(good, dim=1)
    if pixels.shape[1] > MAX_FIT_PIXELS:
        keep = torch.randperm(pixels.shape[1], generator=torch.Generator().manual_seed(seed))
        pixels = pixels[:, keep[:MAX_FIT_PIXELS]]
    info = {"tiles_dir": str(tiles_dir), "slides": [j.slide_id for j in jobs],
            "n_tiles": len(good), "n_pixels": int(pixels.shape[1]), "seed": seed}  # fmt: skip
    return pixels.reshape(1, 3, 1, -1), info
