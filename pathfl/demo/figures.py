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
    path: Path,
    event: np.ndarray,
    time: np.ndarray,
    risks: dict[str, np.ndarray],
    *,
    cut_points: dict[str, float],
    time_unit: str = "months",
) -> dict[str, float]:
    """One panel per risk score (:func:`pathfl.survival.plots.km_panels`: censoring marks,
    number at risk, log-rank p): validation patients above vs at/below the score's cut point
    fixed on the training patients. Returns {name: log-rank p}."""
    from pathfl.survival.plots import KMPanel, km_panels, split_at

    panels = [
        KMPanel(
            name,
            time,
            event,
            split_at(r, cut_points[name]),
            f"split at the training patients' median ({cut_points[name]:.3g})",
        )
        for name, r in risks.items()
    ]
    res = km_panels(
        path,
        panels,
        time_unit=time_unit,
        suptitle="Validation patients of all three sites (never trained on)",
    )
    return {p.name: r["p_value"] for p, r in zip(panels, res, strict=True)}


def _thumb(slide_path: Path, max_px: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail and its scale (thumbnail px per level-0 px)."""
    from pathfl.slide import open_slide

    with open_slide(slide_path) as s:
        img = np.asarray(s.get_thumbnail(max_px).convert("RGB"))
        return img, img.shape[1] / s.dimensions[0]


PHENOTYPE_RGBA = (0.85, 0.1, 0.1, 0.55)
OTHER_TISSUE_RGBA = (0.1, 0.45, 0.95, 0.45)


def _mask_rgba(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask (255 phenotype, 128 other tissue) as an RGBA overlay."""
    import cv2

    m = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    rgba = np.zeros((*shape, 4), np.float32)
    rgba[m == 255] = PHENOTYPE_RGBA
    rgba[m == 128] = OTHER_TISSUE_RGBA
    return rgba


def _mask_legend(ax: Any, mask: np.ndarray) -> None:
    """Legend of the mask classes present in ``mask`` (only those drawn)."""
    from matplotlib.patches import Patch

    handles = [
        Patch(color=rgba[:3], alpha=rgba[3], label=label)
        for value, rgba, label in (
            (255, PHENOTYPE_RGBA, "high-risk phenotype"),
            (128, OTHER_TISSUE_RGBA, "other tissue"),
        )
        if (mask == value).any()
    ]
    if handles:
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                  fontsize=8, frameon=False)  # fmt: skip


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
    """Thumbnail | per-tile attention over it (relative to uniform, colour bar, flatness in
    the title: :mod:`pathfl.survival.heatmaps`) | ground-truth phenotype mask over it; the
    three panels the same size."""
    import cv2

    from pathfl.survival.heatmaps import colour_bar, draw_heat

    plt = _plt()
    img, scale = _thumb(slide_path, 900)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"{mask_path}: cannot read the ground-truth mask")
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    axes[0].imshow(img)
    axes[0].set_title("slide (thumbnail)", fontsize=10)
    _, sc = draw_heat(axes[1], img, coords, scores, tile_l0=tile_l0_px, scale=scale)
    axes[1].set_title(f"federated model: attention per tile ({len(scores)} tiles)", fontsize=10)
    colour_bar(fig, axes[1], sc)
    axes[2].imshow(img)
    axes[2].imshow(_mask_rgba(mask, img.shape[:2]))
    axes[2].set_title("ground truth", fontsize=10)
    _mask_legend(axes[2], mask)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title}\n{sc.caption}", fontsize=11)
    return _save(fig, path)


def image_grid(
    path: Path, items: list[tuple[str, np.ndarray]], *, ncols: int = 3, title: str = ""
) -> Path:
    """A grid of labelled RGB images."""
    plt = _plt()
    nrows = max(1, -(-len(items) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, img) in zip(axes.ravel(), items, strict=False):
        ax.imshow(img)
        ax.set_title(label, fontsize=13)
    fig.tight_layout()
    if title:  # after tight_layout, above the panels (the saved figure's box grows to hold it)
        fig.suptitle(title, fontsize=15, y=1.02)
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
        title="Demo cohort: one slide per site, and its ground-truth mask "
        "(red: high-risk phenotype, blue: other tissue)",
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
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("after round")
    ax.set_ylabel("C-index (within-site validation pairs)")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_title("Federated training: global model's validation C-index")
    return _save(fig, path)
