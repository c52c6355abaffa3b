"""Pictures of the demo report: Kaplan–Meier curves, attention heatmap beside the
ground-truth phenotype mask, QC thumbnails, cohort examples. Matplotlib (Agg) only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from pathfl.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def km_plot(
    path: Path, event: np.ndarray, time: np.ndarray, risks: dict[str, np.ndarray]
) -> dict[str, float]:
    """One panel per risk score: KM curves of patients above vs at/below the median risk,
    with the log-rank p-value. Returns {name: p-value}."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    from pathfl.survival.data import survival_array

    plt = _plt()
    fig, axes = plt.subplots(1, len(risks), figsize=(5.2 * len(risks), 4.2), squeeze=False)
    pvals: dict[str, float] = {}
    y = survival_array(event.astype(bool), time)
    for ax, (name, r) in zip(axes[0], risks.items(), strict=True):
        high = r > np.median(r)
        for grp, colour, label in ((~high, "tab:blue", "low risk"), (high, "tab:red", "high risk")):
            if grp.sum() == 0:
                continue
            t, s = kaplan_meier_estimator(event[grp].astype(bool), time[grp])
            ax.step(
                np.r_[0, t],
                np.r_[1, s],
                where="post",
                color=colour,
                label=f"{label} (n={int(grp.sum())}, events={int(event[grp].sum())})",
            )
        p = float("nan")
        if 0 < high.sum() < len(high) and event.sum() > 0:
            try:
                p = float(compare_survival(y, high.astype(int))[1])
            except ValueError as e:
                log.warning("log-rank test failed: %s", e)
        pvals[name] = p
        ax.set_title(f"{name}\nsplit at its median; log-rank p = {p:.3g}", fontsize=10)
        ax.set_xlabel("months")
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Validation patients of all three sites (never trained on)", fontsize=11, y=1.06)
    _save(fig, path)
    return pvals


def _thumb(slide_path: Path, max_px: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail and its scale (thumbnail px per level-0 px)."""
    from pathfl.slide import open_slide

    with open_slide(slide_path) as s:
        img = np.asarray(s.get_thumbnail(max_px).convert("RGB"))
        return img, img.shape[1] / s.dimensions[0]


def _mask_rgba(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    m = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    rgba = np.zeros((*shape, 4), np.float32)
    rgba[m == 255] = (0.85, 0.1, 0.1, 0.55)
    rgba[m == 128] = (0.1, 0.6, 0.2, 0.18)
    return rgba


def heatmap_figure(
    path: Path,
    *,
    slide_path: Path,
    mask_path: Path,
    coords: np.ndarray,
    tile_l0_px: float,
    scores: np.ndarray,
    title: str,
) -> Path:
    """Thumbnail | per-tile attention over it | ground-truth phenotype mask over it."""
    import cv2

    plt = _plt()
    img, scale = _thumb(slide_path, 900)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{mask_path}: cannot read the ground-truth mask")
    heat = np.full(img.shape[:2], np.nan, np.float32)
    s = (scores - scores.min()) / (np.ptp(scores) or 1.0)
    side = max(1, round(tile_l0_px * scale))
    for (x, y), v in zip(coords, s, strict=True):
        x0, y0 = round(x * scale), round(y * scale)
        heat[y0 : y0 + side, x0 : x0 + side] = v
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    axes[0].imshow(img)
    axes[0].set_title("slide (thumbnail)", fontsize=10)
    axes[1].imshow(img)
    im = axes[1].imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    axes[1].set_title(
        "federated model: attention per tile\n(min–max scaled within the slide)", fontsize=10
    )
    fig.colorbar(im, ax=axes[1], fraction=0.035)
    axes[2].imshow(img)
    axes[2].imshow(_mask_rgba(mask, img.shape[:2]))
    axes[2].set_title("ground truth: high-risk phenotype (red),\nother tissue (green)", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def image_grid(
    path: Path, items: list[tuple[str, np.ndarray]], *, ncols: int = 3, title: str = ""
) -> Path:
    """A grid of labelled RGB images."""
    plt = _plt()
    nrows = max(1, -(-len(items) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, img) in zip(axes.ravel(), items, strict=False):
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def cohort_figure(path: Path, examples: list[tuple[str, Path, Path]]) -> Path:
    """Per site: one slide's thumbnail with its ground-truth mask overlaid."""
    import cv2

    items = []
    for label, slide_path, mask_path in examples:
        img, _ = _thumb(slide_path, 700)
        items.append((label, img))
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is not None:
            over = img.astype(np.float32) / 255
            rgba = _mask_rgba(mask, img.shape[:2])
            over = over * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]
            items.append((label + " — truth", (over * 255).astype(np.uint8)))
    return image_grid(
        path,
        items,
        ncols=2,
        title="Demo cohort: one slide per site, and its ground-truth phenotype mask",
    )


def rounds_plot(path: Path, rounds: list[dict[str, Any]], final_c: float | None) -> Path | None:
    """Federation-level validation C-index of the global model after each round (the sites
    score the model they receive at the start of the next round; the last one is final)."""
    xs, ys = [], []
    for r in rounds:
        c = r.get("federated_c_index_prev_global")
        if isinstance(c, int | float) and np.isfinite(c) and int(r.get("round", 0)) > 1:
            xs.append(int(r["round"]) - 1)
            ys.append(float(c))
    if final_c is not None and np.isfinite(final_c) and rounds:
        xs.append(max(int(r.get("round", 0)) for r in rounds))
        ys.append(float(final_c))
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("after round")
    ax.set_ylabel("C-index (within-site validation pairs)")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("Federated training: global model's validation C-index")
    return _save(fig, path)
