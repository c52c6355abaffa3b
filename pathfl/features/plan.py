"""Deciding what an extraction run does: which coords files, which shard, where each source
slide is, and — by fingerprint — which features files are done, stale or missing."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathfl.config import ConfigError
from pathfl.features.dataset import SlideJob, native_support
from pathfl.formats import FormatFileError
from pathfl.formats.coords_h5 import COORDS_DIR, read_coords, tile_geometry
from pathfl.formats.features_h5 import FeaturesFileError, read_attrs
from pathfl.io import ManifestRow, sha256_json

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms")


class SlideRefusedError(Exception):
    """A slide this run cannot extract (its source slide is missing, or its features file was
    made differently and ``--overwrite`` was not given); it becomes a ``failed`` row."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (0 ≤ K < N) → ``(K, N)``; None/"" → None."""
    if not text:
        return None
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard {text}: need 0 <= K < N (K counts from 0, like SLURM arrays)")
    return k, n


def features_fingerprint(
    *,
    tiling_fingerprint: str,
    encoder: str,
    weights_sha256: str,
    transform: dict[str, Any],
    precision: str,
    dtype: str = "float32",
    encoder_config_sha256: str = "",
) -> str:
    """DESIGN: tiling fingerprint + encoder + weights, plus the pixel transform and the compute
    precision (bf16 features differ from fp32 ones by several per cent). A float16 storage
    dtype is part of it too; float32, the default, adds nothing (fingerprints of files written
    before the option existed stay valid). So is the sha256 of the ``config.json`` a
    transformers encoder was built from (absent for the others)."""
    what = {
        "tiling": tiling_fingerprint,
        "encoder": encoder,
        "weights_sha256": weights_sha256,
        "transform": transform,
        "precision": precision,
    }
    if dtype != "float32":
        what["dtype"] = dtype
    if encoder_config_sha256:
        what["encoder_config_sha256"] = encoder_config_sha256
    return sha256_json(what)


def discover_coords(tiles_dir: Path) -> list[Path]:
    """Coords files of a tile-stage output folder (``DIR/coords/*.h5``, or ``DIR/*.h5``),
    sorted by slide id."""
    if not tiles_dir.is_dir():
        raise ConfigError(f"--tiles {tiles_dir}: not a directory")
    sub = tiles_dir / COORDS_DIR
    found = sorted((sub if sub.is_dir() else tiles_dir).glob("*.h5"), key=lambda p: p.stem)
    if not found:
        raise ConfigError(f"--tiles {tiles_dir}: no coords files (expected {sub}/<slide_id>.h5)")
    return found


def select_shard(paths: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Deterministic round-robin over slide ids sorted by name: shard K of N takes every N-th
    slide starting at K, so the N shards are disjoint, cover everything and are balanced."""
    ordered = sorted(paths, key=lambda p: p.stem)
    if shard is None:
        return ordered
    k, n = shard
    return [p for i, p in enumerate(ordered) if i % n == k]


def _tiles_manifest_paths(tiles_dir: Path) -> dict[str, str]:
    path = tiles_dir / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["slide_id"]: r.get("path", "") for r in csv.DictReader(f) if r.get("slide_id")}


def locate_slide(
    slide_id: str, attrs: dict[str, Any], manifest_paths: dict[str, str], slide_dir: Path | None
) -> Path:
    """The source slide of a coords file: ``--slide-dir`` (file stem = slide id) first, then the
    tile stage's manifest, then a ``slide_path`` attr."""
    if slide_dir is not None:
        for suffix in SLIDE_SUFFIXES:
            for name in (f"{slide_id}{suffix}", f"{slide_id}{suffix.upper()}"):
                if (slide_dir / name).is_file():
                    return slide_dir / name
    for cand in (manifest_paths.get(slide_id, ""), str(attrs.get("slide_path", "") or "")):
        if cand and Path(cand).is_file():
            return Path(cand)
    raise SlideRefusedError(
        f"{slide_id}: source slide not found (not in the tiles manifest.csv nor a slide_path "
        "attr, or moved); pass --slide-dir DIR"
    )


@dataclass
class Plan:
    jobs: list[SlideJob] = field(default_factory=list)
    done: list[ManifestRow] = field(default_factory=list)  # skipped or failed before reading

    @property
    def n_tiles(self) -> int:
        return sum(j.n_tiles for j in self.jobs)


def make_plan(
    tiles_dir: Path,
    out_dir: Path,
    *,
    encoder_name: str,
    weights_sha256: str,
    transform_for: Any,
    encoder_config_sha256: str = "",
    precision: str = "fp32",
    dtype: str = "float32",
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    slide_dir: Path | None = None,
    reader: str = "auto",
) -> Plan:
    """``transform_for(coords_attrs) -> (out_px, transform dict)``. A features file whose
    fingerprint matches is skipped; a mismatching one is recomputed only with ``overwrite``.
    ``reader`` (auto | native | openslide) picks each slide's tile reader
    (:func:`choose_native`); it is not part of the fingerprint (same pixels either way)."""
    plan = Plan()
    manifest_paths = _tiles_manifest_paths(tiles_dir)
    for coords_path in select_shard(discover_coords(tiles_dir), shard):
        slide_id = coords_path.stem
        out_path = out_dir / "features" / f"{slide_id}.h5"
        try:
            coords, attrs = read_coords(coords_path)
            out_px, transform = transform_for(attrs)
            fingerprint = features_fingerprint(
                tiling_fingerprint=str(attrs.get("fingerprint", "")),
                encoder=encoder_name,
                weights_sha256=weights_sha256,
                transform=transform,
                precision=precision,
                dtype=dtype,
                encoder_config_sha256=encoder_config_sha256,
            )
            if out_path.exists():
                existing = _existing_fingerprint(out_path)
                if existing == fingerprint:
                    plan.done.append(_skipped_row(slide_id, out_path, attrs))
                    continue
                if not overwrite:
                    raise SlideRefusedError(
                        f"{out_path} exists but was made differently (fingerprint "
                        f"{existing[:12] or 'unreadable'} ≠ {fingerprint[:12]}: other tiles, "
                        "encoder, weights, stain options, precision or dtype); rerun with "
                        "--overwrite to recompute it"
                    )
            slide_path = locate_slide(slide_id, attrs, manifest_paths, slide_dir)
            native = choose_native(slide_id, slide_path, attrs, coords, reader)
        except (FormatFileError, SlideRefusedError, ConfigError) as e:
            plan.done.append(ManifestRow(slide_id, os.fspath(out_path), "failed", error=str(e)))
            continue
        mpp = attrs.get("mpp_level0")
        geometry = tile_geometry(attrs)
        plan.jobs.append(
            SlideJob(
                slide_id=slide_id,
                slide_path=slide_path,
                coords_path=coords_path,
                out_path=out_path,
                coords=coords,
                attrs={
                    **attrs,
                    "fingerprint": fingerprint,
                    "tiling_fingerprint": attrs.get("fingerprint", ""),
                    "transform": transform,
                },
                patch_level=geometry.patch_level,
                read_size=geometry.read_size,
                out_px=int(out_px),
                backend=str(attrs.get("backend") or "auto"),
                mpp_override=float(mpp) if mpp not in (None, "", 0) else None,
                native=native,
            )
        )
    return plan


def choose_native(
    slide_id: str, slide_path: Path, attrs: dict[str, Any], coords: Any, reader: str
) -> bool:
    """Whether to read this slide with the native-tile reader; says why not once per slide
    (INFO with "auto"; with "native" the slide is refused, :class:`SlideRefusedError`)."""
    if reader == "openslide":
        return False
    why = native_support(slide_path, attrs, coords)
    if not why:
        logger.debug("%s: native-tile reader", slide_id)
        return True
    if reader == "native":
        raise SlideRefusedError(
            f"{slide_path}: --reader native cannot read it: {why} (use --reader auto)"
        )
    backend = str(attrs.get("backend") or "the slide backend")
    logger.info("%s: tiles read with %s, not natively: %s", slide_id, backend, why)
    return False


def _existing_fingerprint(path: Path) -> str:
    try:
        return str(read_attrs(path).get("fingerprint", ""))
    except FeaturesFileError:
        return ""


def _skipped_row(slide_id: str, out_path: Path, attrs: dict[str, Any]) -> ManifestRow:
    try:
        n = int(read_attrs(out_path).get("n_tiles", 0))
    except (FeaturesFileError, TypeError, ValueError):
        n = 0
    mpp = attrs.get("target_mpp")
    return ManifestRow(
        slide_id,
        os.fspath(out_path),
        "skipped",
        n_tiles=n,
        mpp=float(mpp) if mpp not in (None, "") else None,
        error="features up to date (same fingerprint)",
    )
