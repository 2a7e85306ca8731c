"""A CellViT-like nucleus segmentation with realistic errors, derived from the true nuclei."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from bitro.demo.morphology import (
    CELL_TYPES,
    CELLVIT_CLASS,
    CELLVIT_CLASSES,
    CellTable,
    nucleus_outline,
)

#: Probability that a true nucleus is missed, per type (thin spindles and crowded lymphocytes more often).
MISS_RATE = {
    "tumour": 0.05,
    "lymphocyte": 0.09,
    "fibroblast": 0.11,
    "macrophage": 0.06,
    "endothelium": 0.12,
    "normal_epithelium": 0.05,
}
#: Spurious detections per true nucleus.
SPURIOUS_RATE = 0.03
#: Probability that a detected nucleus gets a wrong class.
CONFUSION_RATE = 0.08
#: CellViT colours (as in its GeoJSON export).
CLASS_COLOURS = {
    "Neoplastic": [255, 0, 0],
    "Inflammatory": [34, 221, 77],
    "Connective": [35, 92, 236],
    "Dead": [254, 255, 0],
    "Epithelial": [255, 159, 68],
}


def simulate_cellvit(rng: np.random.Generator, cells: CellTable, mpp: float) -> gpd.GeoDataFrame:
    """Simulate a CellViT segmentation of the true nuclei.

    Errors: type-dependent misses (``MISS_RATE``), spurious small detections (``SPURIOUS_RATE`` per
    nucleus; half are over-segmentation fragments next to a real nucleus, half debris in the tissue, 40 %
    of them classed ``Dead``), outline errors (per-vertex radial jitter ~6 %, a global scale error
    ~8 %, a centre shift ~0.4 µm) and class confusion (``CONFUSION_RATE``; tumour ↔ epithelial and
    lymphocyte/macrophage ↔ connective preferred).

    Parameters
    ----------
    rng
        Random generator.
    cells
        True cells (µm).
    mpp
        Pixel size; the output is in level-0 pixels.

    Returns
    -------
    geopandas.GeoDataFrame
        ``geometry`` (Polygon, px), ``class``, ``cell_id``.
    """
    n = len(cells)
    names = np.array(CELL_TYPES)[cells.cell_type.astype(np.int64)]
    miss = rng.uniform(size=n) < np.array([MISS_RATE[t] for t in names])
    det = cells.take(np.flatnonzero(~miss))
    nv = 16
    verts = nucleus_outline(det, n_vertices=nv)  # µm
    cx = det.x[:, None]
    cy = det.y[:, None]
    scale = np.exp(rng.normal(0.0, 0.08, (len(det), 1)))
    jit = 1.0 + rng.normal(0.0, 0.06, (len(det), nv))
    jit = (jit + np.roll(jit, 1, axis=1) + np.roll(jit, -1, axis=1)) / 3.0
    f = scale * jit
    shift = rng.normal(0.0, 0.4, (len(det), 2))
    vx = cx + (verts[..., 0] - cx) * f + shift[:, :1]
    vy = cy + (verts[..., 1] - cy) * f + shift[:, 1:]
    classes = np.array([CELLVIT_CLASS[CELL_TYPES[t]] for t in det.cell_type])
    conf = rng.uniform(size=len(det)) < CONFUSION_RATE
    alt = {
        "Neoplastic": (["Epithelial", "Inflammatory", "Connective", "Dead"], [0.6, 0.15, 0.15, 0.1]),
        "Epithelial": (["Neoplastic", "Connective"], [0.8, 0.2]),
        "Inflammatory": (["Connective", "Neoplastic", "Dead"], [0.6, 0.25, 0.15]),
        "Connective": (["Inflammatory", "Neoplastic"], [0.7, 0.3]),
    }
    for i in np.flatnonzero(conf):
        opts, p = alt[classes[i]]
        classes[i] = opts[rng.choice(len(opts), p=p)]
    # spurious detections
    n_sp = rng.poisson(SPURIOUS_RATE * n) if n else 0
    frag = rng.uniform(size=n_sp) < 0.5
    host = rng.integers(0, max(n, 1), n_sp)
    ang = rng.uniform(0, 2 * np.pi, n_sp)
    off = np.where(frag, rng.uniform(3.0, 6.0, n_sp), rng.uniform(8.0, 20.0, n_sp))
    sx = cells.x[host] + off * np.cos(ang) if n else np.zeros(0)
    sy = cells.y[host] + off * np.sin(ang) if n else np.zeros(0)
    sr = rng.uniform(1.2, 2.8, n_sp)
    phi = np.linspace(0, 2 * np.pi, 10, endpoint=False)[None, :]
    svx = sx[:, None] + sr[:, None] * np.cos(phi) * (1 + 0.15 * rng.standard_normal((n_sp, 10)))
    svy = sy[:, None] + sr[:, None] * np.sin(phi) * (1 + 0.15 * rng.standard_normal((n_sp, 10)))
    sclass = np.where(
        rng.uniform(size=n_sp) < 0.4,
        "Dead",
        np.array(CELLVIT_CLASSES)[rng.integers(0, 5, n_sp)],
    )
    s = 1.0 / mpp
    polys = [shapely.polygons(_close(np.stack([vx, vy], -1) * s))]
    if n_sp:
        polys.append(shapely.polygons(_close(np.stack([svx, svy], -1) * s)))
    geom = np.concatenate(polys)
    cls = np.concatenate([classes, sclass]) if n_sp else classes
    # order by position like a tiled inference would (row-major), then number them
    cent = shapely.centroid(geom)
    order = np.lexsort((shapely.get_x(cent), np.floor(shapely.get_y(cent) / 256.0)))
    geom = shapely.make_valid(geom[order])
    geom = np.array([_largest_polygon(g) for g in geom], dtype=object)
    gdf = gpd.GeoDataFrame(
        {"class": cls[order], "cell_id": np.arange(1, geom.shape[0] + 1, dtype=np.int64)},
        geometry=gpd.GeoSeries(geom),
    )
    return gdf


def _close(v: np.ndarray) -> np.ndarray:
    return np.concatenate([v, v[:, :1]], axis=1)


def _largest_polygon(g: shapely.Geometry) -> shapely.Polygon:
    if isinstance(g, shapely.Polygon):
        return g
    parts = [p for p in getattr(g, "geoms", []) if isinstance(p, shapely.Polygon)]
    return max(parts, key=lambda p: p.area) if parts else shapely.Polygon()


def write_cellvit(gdf: gpd.GeoDataFrame, parquet: Path, geojson: Path) -> None:
    """Write the segmentation as GeoParquet and as GeoJSON (one Feature per cell, CellViT properties)."""
    gdf.to_parquet(parquet)
    feats = []
    for geom, cls, cid in zip(gdf.geometry, gdf["class"], gdf["cell_id"], strict=True):
        feats.append(
            {
                "type": "Feature",
                "id": int(cid),
                "geometry": shapely.geometry.mapping(geom),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": str(cls), "color": CLASS_COLOURS[str(cls)]},
                    "cell_id": int(cid),
                },
            }
        )
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, separators=(",", ":")))


__all__ = ["simulate_cellvit", "write_cellvit"]
