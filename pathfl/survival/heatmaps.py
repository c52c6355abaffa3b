"""Tile-score heatmaps that do not overstate: attention is painted relative to uniform
(``a·n``, 1 = every tile weighs the same) on a log scale with a perceptually uniform colour
map, the colour bar says so, and the title states how flat the map is (normalised entropy,
max/min relative to uniform). The overlay sits on the slide thumbnail at the tiles' level-0
positions, the plain thumbnail beside it at the same size, then the highest- and
lowest-scoring tiles. Per-tile scores also go to GeoJSON that QuPath imports (File → Import
objects: one tile object per tile, level-0 pixel coordinates, ``measurements``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathfl.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

CMAP = "viridis"
#: every tile within this factor of uniform (both ways) = "near-uniform attention"
NEAR_UNIFORM_FACTOR = 1.5


def is_attention(scores: Any) -> bool:
    """Scores that are attention weights: non-negative and summing to 1 over the slide."""
    s = np.asarray(scores, float)
    return s.size > 0 and bool(np.all(s >= 0)) and abs(float(s.sum()) - 1.0) < 1e-3


@dataclass(frozen=True)
class Flatness:
    """How far attention over ``n`` tiles is from uniform (1/n each)."""

    n: int
    entropy: float  # Shannon entropy / log(n): 1 = uniform, 0 = one tile holds everything
    max_rel: float  # max attention / (1/n)
    min_rel: float  # min attention / (1/n)
    top10_share: float  # share of the attention held by the top 10 % of tiles

    @property
    def near_uniform(self) -> bool:
        f = NEAR_UNIFORM_FACTOR
        return self.max_rel <= f and self.min_rel >= 1 / f

    def caption(self) -> str:
        """``near-uniform attention: max 1.12× uniform, min 0.89×, entropy 0.998 ...``."""
        kind = "near-uniform attention" if self.near_uniform else "attention"
        return (
            f"{kind}: max {self.max_rel:.2f}× uniform, min {self.min_rel:.2f}×, "
            f"entropy {self.entropy:.3f} (1 = uniform); top 10% of tiles hold "
            f"{100 * self.top10_share:.0f}%"
        )


def attention_flatness(scores: Any) -> Flatness:
    """:class:`Flatness` of attention weights (renormalised to sum to 1)."""
    a = np.asarray(scores, float)
    a = a / a.sum()
    n = len(a)
    nz = a[a > 0]
    h = float(-(nz * np.log(nz)).sum() / np.log(n)) if n > 1 else 1.0
    k = max(1, int(np.ceil(0.1 * n)))
    return Flatness(
        n=n,
        entropy=h,
        max_rel=float(a.max() * n),
        min_rel=float(a.min() * n),
        top10_share=float(np.sort(a)[::-1][:k].sum()),
    )


@dataclass(frozen=True)
class ScoreScale:
    """What is painted (``values``), on which colour scale (``norm``), and what it means."""

    values: np.ndarray
    norm: Any
    label: str
    caption: str


def score_scale(scores: Any) -> ScoreScale:
    """Attention: ``a·n`` on a log scale symmetric around 1 (at least 0.5×–2×, so small
    differences are not stretched over the colour map). Other scores (chowder, meanpool):
    raw, min to max, said to be in the model's units."""
    from matplotlib.colors import LogNorm, Normalize

    s = np.asarray(scores, float)
    if is_attention(s):
        fl = attention_flatness(s)
        rel = s * len(s)
        k = max(2.0, fl.max_rel, 1 / max(fl.min_rel, 1e-6))
        return ScoreScale(
            rel, LogNorm(1 / k, k), "attention ÷ uniform (1/n), log scale", fl.caption()
        )
    lo, hi = float(s.min()), float(s.max())
    caption = f"tile scores (model units, not attention): {lo:.3g} to {hi:.3g}"
    return ScoreScale(s, Normalize(lo, hi if hi > lo else lo + 1e-9), "tile score", caption)


def paint_tiles(
    shape: tuple[int, int], coords: Any, values: Any, *, tile_l0: float, scale: float
) -> np.ndarray:
    """An image of ``shape`` with each tile's value at its level-0 box times ``scale``
    (thumbnail px per level-0 px); NaN outside the tiles."""
    out = np.full(shape, np.nan)
    for (x, y), v in zip(np.asarray(coords, float), np.asarray(values, float), strict=True):
        x0, y0 = int(x * scale), int(y * scale)
        x1 = max(x0 + 1, round((x + tile_l0) * scale))
        y1 = max(y0 + 1, round((y + tile_l0) * scale))
        out[y0:y1, x0:x1] = v
    return out


def draw_heat(
    ax: Any, thumb: np.ndarray, coords: Any, scores: Any, *, tile_l0: float, scale: float
) -> tuple[Any, ScoreScale]:
    """The thumbnail with the tile scores over it (alpha 0.6); returns (image, scale)."""
    sc = score_scale(scores)
    heat = paint_tiles(thumb.shape[:2], coords, sc.values, tile_l0=tile_l0, scale=scale)
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(heat), cmap=CMAP, norm=sc.norm, alpha=0.6)
    ax.axis("off")
    return im, sc


def colour_bar(fig: Any, ax: Any, sc: ScoreScale) -> Any:
    """A horizontal colour bar just under ``ax`` (an inset: ``ax`` keeps its size), ticks in
    the painted unit (``0.5×``, ``1×``, ``2×`` for attention)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.ticker import FuncFormatter

    cax = ax.inset_axes((0.1, -0.07, 0.8, 0.03))
    bar = fig.colorbar(ScalarMappable(sc.norm, CMAP), cax=cax, orientation="horizontal")
    bar.set_label(sc.label, fontsize=8)
    if "uniform" in sc.label:
        lo, hi = sc.norm.vmin, sc.norm.vmax
        cand = (0.25, 0.5, 1, 2, 4) if hi <= 4 else (0.001, 0.01, 0.1, 1, 10, 100, 1000)
        ticks = [t for t in cand if lo <= t <= hi]
        bar.set_ticks(ticks)
        bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        bar.ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    bar.ax.tick_params(labelsize=7)
    return bar


def read_tile(slide: Any, x: int, y: int, *, tile_l0: float, px: int) -> Any:
    """One tile (level-0 box at ``x, y``) as a ``px``-square RGB PIL image."""
    level = slide.best_level_for_downsample(max(1.0, tile_l0 / px))
    size = max(1, round(tile_l0 / slide.level_downsamples[level]))
    return slide.read_region((int(x), int(y)), level, (size, size)).convert("RGB").resize((px, px))


def _tile_rows(
    fig: Any, spec: Any, slide: Any, coords: Any, sc: ScoreScale, tile_l0: float, k: int
) -> None:
    order = np.argsort(-sc.values)
    k = min(k, len(order))
    middle = spec.subgridspec(3, 1, height_ratios=[1, 1.6, 1])[1]
    inner = middle.subgridspec(2, k, hspace=0.3, wspace=0.08)
    for row, (name, idx) in enumerate((("highest", order[:k]), ("lowest", order[::-1][:k]))):
        for j, i in enumerate(idx):
            ax = fig.add_subplot(inner[row, j])
            x, y = (int(v) for v in coords[i])
            ax.imshow(read_tile(slide, x, y, tile_l0=tile_l0, px=128))
            unit = "×" if "uniform" in sc.label else ""
            ax.set_title(f"{name} #{j + 1}: {sc.values[i]:.3g}{unit}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])


def heatmap_png(
    slide: Any,
    coords: np.ndarray,
    scores: np.ndarray,
    *,
    tile_size_l0: float,
    out_png: str | os.PathLike[str],
    thumb_px: int = 1024,
    title: str = "",
    n_side: int = 4,
) -> Path:
    """Slide thumbnail | the same with the tile scores over it (+ colour bar) | the
    ``n_side`` highest- and lowest-scoring tiles. The title carries the flatness caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thumb = np.asarray(slide.get_thumbnail(thumb_px).convert("RGB"))
    scale = thumb.shape[1] / slide.dimensions[0]
    aspect = thumb.shape[0] / thumb.shape[1]
    fig = plt.figure(figsize=(17, max(3.6, 5.2 * aspect) + 1.4), dpi=110)
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.1], wspace=0.08)
    ax0, ax1 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    ax0.imshow(thumb)
    ax0.set_title("slide (thumbnail)", fontsize=9)
    ax0.axis("off")
    _, sc = draw_heat(ax1, thumb, coords, scores, tile_l0=tile_size_l0, scale=scale)
    ax1.set_title(f"tile scores at their positions ({len(scores)} tiles)", fontsize=9)
    colour_bar(fig, ax1, sc)
    _tile_rows(fig, gs[2], slide, coords, sc, tile_l0=tile_size_l0, k=n_side)
    fig.suptitle(f"{title}\n{sc.caption}" if title else sc.caption, fontsize=10)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return out_png


def tiles_geojson(coords: Any, scores: Any, *, tile_l0: float, slide_id: str) -> dict[str, Any]:
    """FeatureCollection of one QuPath tile object per tile: a closed square Polygon in
    level-0 pixel coordinates (origin top left, as QuPath expects), ``measurements``
    {"score", "rank" (1 = highest)[, "attention x uniform"]}."""
    s = np.asarray(scores, float)
    rank = np.empty(len(s), int)
    rank[np.argsort(-s)] = np.arange(1, len(s) + 1)
    att = is_attention(s)
    features = []
    for i, (x, y) in enumerate(np.asarray(coords, float)):
        x0, y0, x1, y1 = float(x), float(y), float(x + tile_l0), float(y + tile_l0)
        meas = {"score": float(s[i]), "rank": int(rank[i])}
        if att:
            meas["attention x uniform"] = float(s[i] * len(s))
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-tile-{i}",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                },
                "properties": {
                    "objectType": "tile",
                    "name": f"tile {i}",
                    "classification": {"name": "pathfl tile score", "color": [68, 1, 84]},
                    "measurements": meas,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_tiles_geojson(
    path: str | os.PathLike[str], coords: Any, scores: Any, *, tile_l0: float, slide_id: str
) -> Path:
    """:func:`tiles_geojson` written atomically to ``path``."""
    write_json_atomic(Path(path), tiles_geojson(coords, scores, tile_l0=tile_l0, slide_id=slide_id))
    return Path(path)


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
    canvas = Image.new("RGB", (cols * (tile_px + 4), rows * (tile_px + 20)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, i in enumerate(order):
        x, y = (int(v) for v in coords[i])
        img = read_tile(slide, x, y, tile_l0=tile_size_l0, px=tile_px)
        cx, cy = (k % cols) * (tile_px + 4), (k // cols) * (tile_px + 20)
        canvas.paste(img, (cx, cy + 18))
        draw.text((cx + 2, cy + 2), f"#{k + 1} ({x},{y}) s={scores[i]:.3g}", fill="black")
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        canvas.save(tmp, format="PNG")
    return out_png
