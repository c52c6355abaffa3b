"""Quality-control outputs of tiling: a thumbnail PNG with the tissue contours and the tile
grid drawn on it, and a GeoJSON of the tissue polygons (level-0 pixels) that QuPath imports
as annotations (File → Import objects, or drag and drop)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathfl.io import atomic_path
from pathfl.tiling.tissue import TissueMask

CONTOUR_RGB = (0, 170, 0)
TILE_RGB = (30, 90, 230)


def draw_qc(
    overview: np.ndarray,
    *,
    level0_size: tuple[int, int],
    tissue: TissueMask,
    coords: np.ndarray,
    size_l0: int,
    label: str = "",
) -> np.ndarray:
    """RGB image: ``overview`` with tiles shaded blue (outlined when big enough) and tissue
    contours in green."""
    img = overview.copy()
    h, w = img.shape[:2]
    sx, sy = w / level0_size[0], h / level0_size[1]
    tile_w = size_l0 * sx
    if len(coords):
        shade = np.zeros((h, w), dtype=bool)
        x0 = np.floor(coords[:, 0] * sx).astype(int)
        y0 = np.floor(coords[:, 1] * sy).astype(int)
        x1 = np.ceil((coords[:, 0] + size_l0) * sx).astype(int)
        y1 = np.ceil((coords[:, 1] + size_l0) * sy).astype(int)
        for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
            shade[b:d, a:c] = True
        tint = np.array(TILE_RGB, dtype=np.float32) * 0.35
        img[shade] = (img[shade].astype(np.float32) * 0.65 + tint).astype(np.uint8)
        if tile_w >= 6:
            for a, b, c, d in zip(x0, y0, x1, y1, strict=True):
                cv2.rectangle(img, (int(a), int(b)), (int(c) - 1, int(d) - 1), TILE_RGB, 1)
    thickness = max(1, round(max(h, w) / 500))
    for rings in tissue.polygons_level0():
        for ring in rings:
            pts = np.round(ring * [sx, sy]).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, CONTOUR_RGB, thickness, lineType=cv2.LINE_AA)
    if label:
        scale = max(0.4, max(h, w) / 1600)
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), base = cv2.getTextSize(label, font, scale, 1)
        pad = max(2, round(4 * scale))
        cv2.rectangle(img, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (255, 255, 255), -1)
        cv2.putText(img, label, (pad, pad + th), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """``rgb`` as a PNG (zlib level 1: the QC picture is written once and read by people; OpenCV's
    encoder took ~15 % less CPU than Pillow's at the same level and size here)."""
    path = Path(path)
    ok, png = cv2.imencode(
        ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
        os.chmod(tmp, 0o644)
    return path


def _polygons(geom: Any) -> list[Any]:
    """Flatten (Multi)Polygons out of any geometry (make_valid may return collections)."""
    from shapely.geometry import Polygon

    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for g in getattr(geom, "geoms", []) for p in _polygons(g)]


def tissue_geojson(
    tissue: TissueMask, *, slide_id: str, simplify_px: float | None = None
) -> dict[str, Any]:
    """FeatureCollection of tissue polygons (with holes) in level-0 pixel coordinates,
    ``objectType: annotation`` and classification "Tissue", as QuPath reads them."""
    from shapely.geometry import MultiPolygon, Polygon, mapping  # lazy: ~0.1 s to import
    from shapely.validation import make_valid

    tol = simplify_px if simplify_px is not None else 0.5 * max(tissue.scale_x, tissue.scale_y)
    features = []
    for i, rings in enumerate(tissue.polygons_level0()):
        if len(rings[0]) < 3:
            continue
        poly = Polygon(rings[0], [r for r in rings[1:] if len(r) >= 3])
        geom = make_valid(poly).simplify(tol, preserve_topology=True)
        parts = [p for p in _polygons(geom) if p.area > 0]
        if not parts:
            continue
        shape = parts[0] if len(parts) == 1 else MultiPolygon(parts)
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-tissue-{i}",
                "geometry": mapping(shape),
                "properties": {
                    "objectType": "annotation",
                    "name": f"tissue {i}",
                    "classification": {"name": "Tissue", "color": list(CONTOUR_RGB)},
                    "area_px": float(shape.area),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], geojson: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(geojson, separators=(",", ":")) + "\n")
        os.chmod(tmp, 0o644)
    return Path(path)
