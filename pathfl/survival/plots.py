"""Figures: Kaplan–Meier curves of risk groups (with log-rank p) and tile-score heatmaps over
slide thumbnails plus a montage of the top-scoring tiles."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import atomic_path
from pathfl.survival.data import survival_array

logger = logging.getLogger(__name__)


def logrank(time: Any, event: Any, group: Any) -> dict[str, float]:
    """Log-rank test between groups (``sksurv.compare.compare_survival``)."""
    from sksurv.compare import compare_survival

    group = np.asarray(group)
    if len(np.unique(group)) < 2:
        return {"chisq": float("nan"), "p_value": float("nan")}
    chisq, p = compare_survival(survival_array(event, time), group)
    return {"chisq": float(chisq), "p_value": float(p)}


def km_plot(
    time: Any,
    event: Any,
    high_risk: Any,
    out_png: str | os.PathLike[str],
    *,
    title: str = "Kaplan-Meier by risk group",
    time_unit: str = "time",
) -> dict[str, Any]:
    """KM curves of low/high risk groups with the log-rank p in the legend title; returns
    the test result and group sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sksurv.nonparametric import kaplan_meier_estimator

    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    high = np.asarray(high_risk).astype(bool)
    test = logrank(time, event, high.astype(int))
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for label, mask, color in (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red")):
        if mask.sum() == 0:
            continue
        t, s, (lo, hi) = kaplan_meier_estimator(event[mask], time[mask], conf_type="log-log")
        ax.step(t, s, where="post", color=color, label=f"{label} (n={mask.sum()})")
        ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15)
    p = test["p_value"]
    ax.legend(title=f"log-rank p = {p:.2g}" if np.isfinite(p) else "log-rank p n/a")
    ax.set_xlabel(time_unit)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return {**test, "n_low": int((~high).sum()), "n_high": int(high.sum()), "png": str(out_png)}


def _rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Scores -> [0, 1] by rank (robust to the tiny spread of softmax attention)."""
    if len(scores) < 2:
        return np.ones_like(scores, dtype=float)
    r = np.argsort(np.argsort(scores)).astype(float)
    return r / (len(scores) - 1)


def heatmap_png(
    slide: Any,
    coords: np.ndarray,
    scores: np.ndarray,
    *,
    tile_size_l0: float,
    out_png: str | os.PathLike[str],
    thumb_px: int = 1024,
    alpha: float = 0.5,
    title: str = "",
) -> Path:
    """Paint ``scores`` (one per tile at level-0 ``coords``) over the slide thumbnail, side by
    side with the plain thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    thumb = np.asarray(slide.get_thumbnail(thumb_px).convert("RGB")).astype(float) / 255
    w0, h0 = slide.dimensions
    sx, sy = thumb.shape[1] / w0, thumb.shape[0] / h0
    values = np.full(thumb.shape[:2], np.nan)
    norm = _rank_normalise(np.asarray(scores, float))
    for (x, y), v in zip(np.asarray(coords), norm, strict=True):
        x0, y0 = int(x * sx), int(y * sy)
        x1 = max(x0 + 1, round((x + tile_size_l0) * sx))
        y1 = max(y0 + 1, round((y + tile_size_l0) * sy))
        values[y0:y1, x0:x1] = v
    rgba = colormaps["jet"](np.nan_to_num(values))[..., :3]
    mask = ~np.isnan(values)
    overlay = thumb.copy()
    overlay[mask] = (1 - alpha) * thumb[mask] + alpha * rgba[mask]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * thumb.shape[0] / thumb.shape[1] + 0.6), dpi=110)
    axes[0].imshow(thumb)
    axes[0].set_title("slide")
    im = axes[1].imshow(overlay)
    axes[1].set_title(title or "tile scores (rank-normalised)")
    for ax in axes:
        ax.axis("off")
    sm = plt.cm.ScalarMappable(cmap="jet")
    sm.set_array([0, 1])
    fig.colorbar(sm, ax=axes[1], fraction=0.046, label="score percentile")
    del im
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png


def top_tiles_montage(
    slide: Any,
    coords: np.ndarray,
    scores: np.ndarray,
    *,
    tile_size_l0: int,
    out_png: str | os.PathLike[str],
    n_tiles: int = 16,
    tile_px: int = 160,
) -> Path:
    """Grid of the ``n_tiles`` highest-scoring tiles read from the slide at their coords."""
    from PIL import Image, ImageDraw

    order = np.argsort(-np.asarray(scores, float))[:n_tiles]
    cols = int(np.ceil(np.sqrt(len(order)))) or 1
    rows = int(np.ceil(len(order) / cols)) or 1
    level = slide.best_level_for_downsample(max(1.0, tile_size_l0 / tile_px))
    ds = slide.level_downsamples[level]
    size = max(1, round(tile_size_l0 / ds))
    canvas = Image.new("RGB", (cols * (tile_px + 4), rows * (tile_px + 20)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(order):
        x, y = (int(v) for v in coords[i])
        img = slide.read_region((x, y), level, (size, size)).convert("RGB")
        img = img.resize((tile_px, tile_px))
        cx, cy = (k % cols) * (tile_px + 4), (k // cols) * (tile_px + 20)
        canvas.paste(img, (cx, cy + 18))
        draw.text((cx + 2, cy + 2), f"#{k + 1} ({x},{y}) s={scores[i]:.3g}", fill="black")
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png
