"""Cell footprints and their exact areas under the squares of a tile's token grid.

A cell's footprint is its nucleus outline (``geometry`` of ``cells.parquet``, level-0 px) or, where it has
none, a disk of its equivalent radius ``√(area_um2 / π)`` (a :data:`DISK_VERTICES`-gon of the same area).
A token's weight is the exact area of the footprint inside that token's square, normalised to sum 1 per
cell (:func:`part_weights`). Areas are computed for all cells of a part at once (:func:`coverage`
accumulates each outline edge's trapezoids, as font rasterisers do). A footprint that covers no square
(an empty outline, an area of 0) falls back to the square under the centroid: every cell gets at least one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import shapely

from bitro.features.tiling import TokenGrid

#: Vertices of the polygon standing in for a cell without an outline (a disk of the same area).
DISK_VERTICES = 32


@dataclass(frozen=True)
class Footprints:
    """Every cell's footprint as closed rings of vertices, flat, relative to the cell's centroid.

    Attributes
    ----------
    dx, dy
        Vertex offsets from the centroid (level-0 px, float32); a ring's last vertex repeats its first.
    ring
        Ring id of each vertex; a ring's vertices are consecutive, rings numbered in order.
    ring_sign
        +1 for an outline's exterior, −1 for a hole (per ring).
    start
        Vertices of cell ``i`` are ``start[i]:start[i + 1]`` (none: the centroid alone).
    kinds
        Cells with an outline (``polygon``), a disk from ``area_um2`` (``disk``) or neither (``centroid``).
    """

    dx: np.ndarray
    dy: np.ndarray
    ring: np.ndarray
    ring_sign: np.ndarray
    start: np.ndarray
    kinds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_cells(cls, cells: pd.DataFrame, slide_mpp: float) -> Footprints:
        """Footprints of ``cells.parquet`` rows: outlines (WKB or shapely) where present, else disks."""
        n = len(cells)
        x = cells["x_px"].to_numpy(np.float64)
        y = cells["y_px"].to_numpy(np.float64)
        xs, ys, ring_cell, ring_ext, ring_len = [], [], [], [], []
        outlined = np.zeros(n, dtype=bool)
        if "geometry" in cells.columns and n:
            present = np.flatnonzero(cells["geometry"].notna().to_numpy())
            values = cells["geometry"].to_numpy(dtype=object)[present]
            if len(values) and isinstance(values[0], bytes | bytearray | memoryview):
                geoms = shapely.from_wkb(values.astype(object))
            else:
                geoms = np.asarray(values, dtype=object)
            polygons, polygon_cell = shapely.get_parts(geoms, return_index=True)
            keep = shapely.get_type_id(polygons) == shapely.GeometryType.POLYGON
            polygons, polygon_cell = polygons[keep], present[polygon_cell[keep]]
            rings, ring_polygon = shapely.get_rings(polygons, return_index=True)
            coords, vertex_ring = shapely.get_coordinates(rings, return_index=True)
            if len(rings):
                ring_cell.append(polygon_cell[ring_polygon])
                ring_ext.append(np.r_[True, ring_polygon[1:] != ring_polygon[:-1]])
                ring_len.append(np.bincount(vertex_ring, minlength=len(rings)))
                xs.append(coords[:, 0])
                ys.append(coords[:, 1])
                outlined[ring_cell[-1]] = True
        area = cells["area_um2"].to_numpy(np.float64) if "area_um2" in cells.columns else np.full(n, np.nan)
        disk = ~outlined & np.isfinite(area) & (area > 0)
        if disk.any():
            k = DISK_VERTICES
            # Circumradius of a regular k-gon whose area is that of the disk.
            scale = math.sqrt(2 * math.pi / (k * math.sin(2 * math.pi / k)))
            radius = np.sqrt(area[disk] / math.pi) / slide_mpp * scale
            angle = np.linspace(0.0, 2 * math.pi, k + 1)
            angle[-1] = 0.0
            idx = np.flatnonzero(disk)
            xs.append((x[idx, None] + radius[:, None] * np.cos(angle)).ravel())
            ys.append((y[idx, None] + radius[:, None] * np.sin(angle)).ravel())
            ring_cell.append(idx)
            ring_ext.append(np.ones(len(idx), dtype=bool))
            ring_len.append(np.full(len(idx), k + 1))
        kinds = {
            "polygon": int(outlined.sum()),
            "disk": int(disk.sum()),
            "centroid": int(n - outlined.sum() - disk.sum()),
        }
        if not ring_cell:
            empty = np.zeros(0, np.float32)
            return cls(
                empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(n + 1, np.int64), kinds
            )
        rc, re, rl = np.concatenate(ring_cell), np.concatenate(ring_ext), np.concatenate(ring_len)
        vx, vy = np.concatenate(xs), np.concatenate(ys)
        order = np.argsort(rc, kind="stable")
        ring_start = np.cumsum(rl) - rl
        vertices = _ragged(ring_start[order], rl[order])
        vertex_cell = np.repeat(rc[order], rl[order])
        return cls(
            dx=(vx[vertices] - x[vertex_cell]).astype(np.float32),
            dy=(vy[vertices] - y[vertex_cell]).astype(np.float32),
            ring=np.repeat(np.arange(len(rc), dtype=np.int64), rl[order]),
            ring_sign=np.where(re[order], 1, -1).astype(np.int8),
            start=np.searchsorted(vertex_cell, np.arange(n + 1)).astype(np.int64),
            kinds=kinds,
        )


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges ``starts[i] : starts[i] + lengths[i]``."""
    lengths = np.asarray(lengths, np.int64)
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, np.int64), lengths) + within


def _crossings(a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edge, t): where edges from ``a0`` to ``a1`` cross the integers strictly between their ends."""
    lo = np.floor(np.minimum(a0, a1)) + 1
    hi = np.ceil(np.maximum(a0, a1)) - 1
    count = np.maximum(hi - lo + 1, 0).astype(np.int64)
    edge = np.repeat(np.arange(len(a0)), count)
    k = lo[edge] + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    return edge, (k - a0[edge]) / (a1[edge] - a0[edge])


def coverage(
    x: np.ndarray,
    y: np.ndarray,
    ring: np.ndarray,
    ring_sign: np.ndarray,
    ring_owner: np.ndarray,
    square: float,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact areas of outlines inside the squares of an ``n × n`` grid of ``square``-px squares.

    Parameters
    ----------
    x, y
        Vertices (px, grid origin at 0) of closed rings; a ring's vertices are consecutive.
    ring
        Ring id (``0 … R−1``) of each vertex.
    ring_sign
        +1 (exterior) or −1 (hole) per ring; a ring's orientation does not matter.
    ring_owner
        The owner (cell, ``0 … m−1``) of each ring.
    square, n
        Square side (px) and squares per side; areas outside the grid are dropped.

    Returns
    -------
    owner, row, col, area
        One entry per (owner, square) with a positive area (px²), sorted by owner, row and column.

    Notes
    -----
    Every edge is split where it crosses a grid line; a piece inside square ``(r, c)`` adds, per unit of
    its height ``dy``, the area to its right: ``dy·(1 − x̄)`` to square ``c`` (``x̄`` its mean x within the
    square) and ``dy`` to every square right of it, stored as ``dy·x̄`` at ``c + 1`` and summed along the
    row. Over a closed ring the pieces of each row sum to the ring's signed area inside every square.
    """
    empty = (np.zeros(0, np.int64),) * 3 + (np.zeros(0, np.float64),)
    ring = np.asarray(ring, np.int64)
    if len(ring) < 2:
        return empty  # type: ignore[return-value]
    X, Y = np.asarray(x, np.float64) / square, np.asarray(y, np.float64) / square  # noqa: N806
    same = ring[1:] == ring[:-1]
    x0, y0, x1, y1 = X[:-1][same], Y[:-1][same], X[1:][same], Y[1:][same]
    edge_ring = ring[:-1][same]
    n_rings = len(ring_sign)
    # Orientation in this accumulation's convention (area = −∮ x dy), so every ring counts positive.
    signed = np.bincount(edge_ring, weights=-(x0 + x1) / 2 * (y1 - y0), minlength=n_rings)
    edge_sign = (np.sign(signed) * np.asarray(ring_sign, np.float64))[edge_ring]
    n_edges = len(x0)
    ex, tx = _crossings(x0, x1)
    ey, ty = _crossings(y0, y1)
    every = np.arange(n_edges)
    edge = np.concatenate([every, every, ex, ey])
    t = np.concatenate([np.zeros(n_edges), np.ones(n_edges), tx, ty])
    order = np.lexsort((t, edge))
    edge, t = edge[order], t[order]
    pair = edge[1:] == edge[:-1]
    e, ta, tb = edge[:-1][pair], t[:-1][pair], t[1:][pair]
    ddx, ddy = (x1 - x0)[e], (y1 - y0)[e]
    dy = (tb - ta) * ddy * edge_sign[e]
    moving = dy != 0
    e, ta, tb, ddx, ddy, dy = e[moving], ta[moving], tb[moving], ddx[moving], ddy[moving], dy[moving]
    mid = (ta + tb) / 2
    xm, ym = x0[e] + mid * ddx, y0[e] + mid * ddy
    r = np.floor(ym).astype(np.int64)
    c = np.floor(xm).astype(np.int64)
    frac = xm - c
    owner = np.asarray(ring_owner, np.int64)[edge_ring[e]]
    o = np.concatenate([owner, owner])
    rr = np.concatenate([r, r])
    cc = np.concatenate([c, c + 1])
    value = np.concatenate([dy * (1 - frac), dy * frac])
    # Rows outside the grid never matter; what lies left of it counts from column 0 on; right of it, never.
    keep = (rr >= 0) & (rr < n) & (cc < n)
    o, rr, cc, value = o[keep], rr[keep], np.maximum(cc[keep], 0), value[keep]
    if not len(o):
        return empty  # type: ignore[return-value]
    m = int(o.max()) + 1
    r_lo, c_lo = np.full(m, n, np.int64), np.full(m, n, np.int64)
    r_hi, c_hi = np.full(m, -1, np.int64), np.full(m, -1, np.int64)
    np.minimum.at(r_lo, o, rr)
    np.minimum.at(c_lo, o, cc)
    np.maximum.at(r_hi, o, rr)
    np.maximum.at(c_hi, o, cc)
    height = np.where(r_hi >= 0, r_hi - r_lo + 1, 0)
    width = np.where(c_hi >= 0, c_hi - c_lo + 1, 0)
    size = height * width
    base = np.cumsum(size) - size
    flat = base[o] + (rr - r_lo[o]) * width[o] + (cc - c_lo[o])
    buffer = np.bincount(flat, weights=value, minlength=int(size.sum()))
    # Sum along every row of every owner's box (each row's pieces total 0, so the running sum stays small).
    running = np.cumsum(buffer)
    row_len = np.repeat(width, height)
    row_start = np.cumsum(row_len) - row_len
    before = np.where(row_start > 0, running[np.maximum(row_start - 1, 0)], 0.0)
    area = (running - np.repeat(before, row_len)) * square * square
    pos = np.flatnonzero(area > 1e-9 * square * square)
    box = np.repeat(np.arange(m), size)[pos]
    local = pos - base[box]
    return box, r_lo[box] + local // width[box], c_lo[box] + local % width[box], area[pos]


def part_weights(
    local_xy: np.ndarray, rows: np.ndarray, footprints: Footprints, grid: TokenGrid, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token weights ``(owner, token, weight)`` of cells, each on its own tile.

    Parameters
    ----------
    local_xy
        (m × 2) centroids on their tile's input (px).
    rows
        The cells' rows in ``footprints``.
    footprints
        Outlines of every cell.
    grid
        Where the tokens sit on a tile.
    scale
        Tile px per level-0 px.

    Returns
    -------
    owner, token, weight
        Sorted by owner (``0 … m−1``, the position in ``rows``) and token; each owner's weights sum to 1.
    """
    m = len(rows)
    lengths = footprints.start[rows + 1] - footprints.start[rows]
    vertices = _ragged(footprints.start[rows], lengths)
    vertex_owner = np.repeat(np.arange(m), lengths)
    ring = footprints.ring[vertices]
    new_ring = np.r_[True, ring[1:] != ring[:-1]] if len(ring) else np.zeros(0, dtype=bool)
    local_ring = np.cumsum(new_ring) - 1
    x = local_xy[vertex_owner, 0] + footprints.dx[vertices].astype(np.float64) * scale
    y = local_xy[vertex_owner, 1] + footprints.dy[vertices].astype(np.float64) * scale
    owner, row, col, area = coverage(
        x,
        y,
        local_ring,
        footprints.ring_sign[ring[new_ring]],
        vertex_owner[new_ring],
        grid.fine,
        grid.fine_n,
    )
    total = np.bincount(owner, weights=area, minlength=m)
    alone = np.flatnonzero(total <= 0)  # no area inside the grid: the square under the centroid
    centre = np.clip(np.floor(local_xy[alone] / grid.fine), 0, grid.fine_n - 1).astype(np.int64)
    owner = np.concatenate([owner, alone])
    row = np.concatenate([row, centre[:, 1]])
    col = np.concatenate([col, centre[:, 0]])
    weight = np.concatenate([area / total[owner[: len(area)]], np.ones(len(alone))])
    return grid.sample(owner, row, col, weight)
