"""Tile-token mode: one encoder forward per tile, every cell of the tile pooled from the tokens under it.

Crop mode (:mod:`bitro.features.embed`) runs the encoder once per cell, on its 48 × 48 crop (resized to
224 px for DINOv3). Tile-token mode runs it once per *tile* of the slide, at the crop pixel size (0.5 µm/px
by default) without resizing, and reads each cell off the output tokens, so one forward serves the few
hundred cells of a tile.

Tiles
-----
The slide's ``mpp`` grid (:mod:`bitro.preprocess.regions`) is cut into tiles whose cores of ``tile_px``
px partition it; each tile is read with ``margin_px`` px of context on every side (the encoder sees
``tile_px + 2·margin_px`` px, stain-normalised by :meth:`bitro.preprocess.crops.CropReader.region`), so a
cell near a core edge still has its neighbourhood. A cell is pooled from exactly one tile, the one whose
core holds its centroid: there it lies at least ``margin_px`` inside what the encoder saw, deeper than in
any other tile (the tile where it is most central). Only tiles holding cells are read.

Footprints
----------
A cell's footprint is its nucleus outline (``geometry`` of ``cells.parquet``, level-0 px) or, where it has
none, a disk of its equivalent radius ``√(area_um2 / π)`` (a 32-gon of the same area). A token's weight is
the exact area of the footprint inside that token's square, normalised to sum 1 per cell; the embedding is
the weighted mean of the tokens. Areas are computed for all cells of a part at once (:func:`coverage`
accumulates each outline edge's trapezoids, as font rasterisers do). A footprint that covers no square
(an empty outline, an area of 0) falls back to the token under the centroid: every cell gets at least one.

- ViT (DINOv3): the tokens are the patch tokens (CLS and register tokens dropped): ``(side / 16)²`` of them
  after the CLS and register tokens, row by row (``DINOv3ViTEmbeddings`` concatenates CLS, registers and
  the flattened patch grid). The footprint squares are the 16-px patches themselves.
- CNN (EfficientNet-Lite0): the tokens are the cells of the last feature map, one per 32 px (16 µm at
  0.5 µm/px, wider than most nuclei). The footprint is measured on 8-px squares and the map sampled
  bilinearly at each square's centre (map cells are centred where the network's padding puts them, see
  :meth:`bitro.features.efficientnet.EfficientNetLite0.feature_grid`). We chose bilinear sampling because
  nearest-cell pooling would give every nucleus inside one 16 µm cell the same vector; with bilinear
  weights a nucleus takes from its four nearest map cells in proportion to how close it is to each. Even
  so, the map's ~850-px receptive field makes neighbours look alike, which is why ``auto`` keeps
  EfficientNet-Lite0 in crop mode (:data:`bitro.options.AUTO_EMBED_MODE`).

DINOv3 places patches by RoPE on coordinates normalised to [−1, 1] over the input, so any side that is a
multiple of 16 works (DINOv3 was trained at several resolutions). Attention is global, so a token still
depends on the whole tile: embeddings change a little with the tile size and the context, as crop-mode
embeddings change with the crop.

Output and resume
-----------------
The same contract as crop mode: ``embeddings.npy`` (N × E float16, row ``i`` = row ``i`` of
``cells.parquet``) and ``embeddings.json`` with ``"mode": "tile-token"``. Tiles run in row-major order,
in parts of ``part_tiles`` tiles. A worker process reads a part (pixels and footprints) while the encoder
runs on the previous one. Each finished part is recorded beside the partial output, so an interrupted
run resumes at the first unfinished part and writes what an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import shapely
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm.auto import tqdm

from bitro._atomic import atomic_path
from bitro.errors import InputError, TileSettingsError
from bitro.features.embed import _resume_state
from bitro.features.encoders import (
    DINOv3Encoder,
    EfficientNetEncoder,
    Encoder,
    HistomicsTKMorphologyEncoder,
    MorphologyEncoder,
)
from bitro.io.slides import Slide, open_slide
from bitro.options import NO_TOKENS
from bitro.preprocess.crops import CropParams, CropReader
from bitro.preprocess.regions import grid_shape
from bitro.preprocess.stain import StainNormalizer, read_normalizer

#: Vertices of the polygon standing in for a cell without an outline (a disk of the same area).
DISK_VERTICES = 32
#: Side of the footprint squares for a CNN map, as a fraction of its stride (8 px for a 32-px stride).
CNN_FINE_FRACTION = 4


# ------------------------------------------------------------------------------------------ token grids


@dataclass(frozen=True)
class TokenGrid:
    """Where an encoder's output tokens sit on a square input of ``side`` px.

    Token ``(i, j)``, at row-major index ``i·n + j``, is centred on ``(origin + stride·j, origin +
    stride·i)`` (pixel ``p`` spans ``[p, p + 1)``). Footprints are measured on squares of ``fine`` px and
    the tokens sampled bilinearly at the squares' centres; when ``fine == stride`` and the squares are the
    tokens' own (a ViT's patches), the sampling is the identity.
    """

    side: int
    n: int
    stride: float
    origin: float
    fine: int

    @property
    def fine_n(self) -> int:
        """Footprint squares along each side."""
        return math.ceil(self.side / self.fine)

    def sample(
        self, owner: np.ndarray, row: np.ndarray, col: np.ndarray, weight: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token weights ``(owner, token, weight)`` of weighted footprint squares, sorted by owner and token.

        Each square ``(row, col)`` is replaced by the bilinear weights of the four tokens around its centre
        (clamped at the border); weights of the same owner and token are summed.
        """
        iy, fy = self._axis(row)
        ix, fx = self._axis(col)
        owners, tokens, weights = [], [], []
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                w = weight * wy * wx
                keep = w > 0
                owners.append(owner[keep])
                tokens.append(((iy + dy) * self.n + ix + dx)[keep])
                weights.append(w[keep])
        per_owner = self.n * self.n
        key = np.concatenate(owners).astype(np.int64) * per_owner + np.concatenate(tokens)
        unique, inverse = np.unique(key, return_inverse=True)
        summed = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(unique))
        return unique // per_owner, unique % per_owner, summed

    def _axis(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower token index and fraction towards the next one, at the centres of squares ``index``."""
        u = np.clip(((np.asarray(index) + 0.5) * self.fine - self.origin) / self.stride, 0.0, self.n - 1.0)
        lower = np.minimum(np.floor(u), max(self.n - 2, 0)).astype(np.int64)
        return lower, u - lower


@runtime_checkable
class TokenEncoder(Protocol):
    """An encoder as tile-token mode uses it: tokens of whole tiles and where they sit."""

    @property
    def name(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def grid(self, side: int) -> TokenGrid:
        """Where the tokens of a ``side``-px square input sit."""
        ...

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        """Tokens (n, grid.n², dim) float32, row-major, of uint8 tiles (n, side, side, 3), on the device."""
        ...


@dataclass
class ViTTokens:
    """The patch tokens of a DINOv3 ViT at the tile's own size (RoPE positions, no resizing)."""

    encoder: DINOv3Encoder

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def sha256(self) -> str:
        return self.encoder.sha256

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def grid(self, side: int) -> TokenGrid:
        patch = self.encoder.patch_size
        return TokenGrid(side=side, n=side // patch, stride=float(patch), origin=patch / 2, fine=patch)

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        out = self.encoder.tokens(tiles, size=tiles.shape[1])
        # Layout: CLS, register tokens, then the patches row by row.
        return out[:, 1 + self.encoder.n_registers :].float()


@dataclass
class CNNTokens:
    """The cells of EfficientNet-Lite0's last feature map, sampled bilinearly under each footprint."""

    encoder: EfficientNetEncoder

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def sha256(self) -> str:
        return self.encoder.sha256

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def grid(self, side: int) -> TokenGrid:
        stride, origin, n = self.encoder.model.feature_grid(side)
        return TokenGrid(side=side, n=n, stride=stride, origin=origin, fine=int(stride) // CNN_FINE_FRACTION)

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        fmap = self.encoder.feature_map(tiles, size=tiles.shape[1])
        return fmap.flatten(2).transpose(1, 2).float()


def token_encoder(encoder: Encoder | TokenEncoder) -> TokenEncoder:
    """The tile-token view of an encoder.

    Raises
    ------
    TileSettingsError
        ``morphology``: it has no tokens (use crop mode).
    """
    if isinstance(encoder, (MorphologyEncoder, HistomicsTKMorphologyEncoder)):
        raise TileSettingsError("--mode tile-token", NO_TOKENS)
    if isinstance(encoder, DINOv3Encoder):
        return ViTTokens(encoder)
    if isinstance(encoder, EfficientNetEncoder):
        return CNNTokens(encoder)
    if isinstance(encoder, TokenEncoder):
        return encoder
    raise TypeError(f"{type(encoder).__name__} has no tokens for tile-token mode")


# ------------------------------------------------------------------------------------------ footprints


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


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class TilePlan:
    """Which tiles are read, in which order, and which cells each one serves.

    Attributes
    ----------
    tiles
        (T × 2) tile column and row on the ``mpp`` grid, row-major, only tiles holding cells.
    order
        Cell rows (of ``cells.parquet``) sorted by tile; tile ``k`` serves ``order[start[k]:start[k+1]]``.
    start
        (T + 1) offsets into ``order``.
    """

    tiles: np.ndarray
    order: np.ndarray
    start: np.ndarray

    @classmethod
    def build(cls, gx: np.ndarray, gy: np.ndarray, grid: tuple[int, int], tile_px: int) -> TilePlan:
        """Assign each cell (centroid ``gx, gy`` on the grid) to the tile whose core holds it."""
        cols, rows = math.ceil(grid[0] / tile_px), math.ceil(grid[1] / tile_px)
        tx = np.clip(np.floor(gx / tile_px), 0, cols - 1).astype(np.int64)
        ty = np.clip(np.floor(gy / tile_px), 0, rows - 1).astype(np.int64)
        key = ty * cols + tx
        order = np.argsort(key, kind="stable")
        unique, first = np.unique(key[order], return_index=True)
        tiles = np.column_stack([unique % cols, unique // cols])
        return cls(tiles=tiles, order=order, start=np.r_[first, len(order)].astype(np.int64))


class _Parts(Dataset):
    """Parts of a tile plan: each item holds a part's pixels and its cells' token weights."""

    def __init__(
        self,
        slide: Slide,
        normalizer: StainNormalizer | None,
        cells_xy: np.ndarray,
        footprints: Footprints,
        plan: TilePlan,
        grid: TokenGrid,
        *,
        mpp: float,
        tile_px: int,
        margin_px: int,
        part_tiles: int,
        todo: list[int],
    ) -> None:
        self.slide, self.normalizer, self.cells_xy, self.footprints = slide, normalizer, cells_xy, footprints
        self.plan, self.grid, self.mpp = plan, grid, mpp
        self.tile_px, self.margin_px, self.part_tiles, self.todo = tile_px, margin_px, part_tiles, todo
        self._reader: CropReader | None = None

    def __len__(self) -> int:
        return len(self.todo)

    def _open(self) -> CropReader:
        if self._reader is None:
            slide = self.slide
            if get_worker_info() is not None:  # a worker process opens its own file handle
                slide = open_slide(self.slide.path, mpp=self.slide.mpp)
            self._reader = CropReader(slide, CropParams(mpp=self.mpp), self.normalizer)
        return self._reader

    def __getitem__(self, item: int) -> dict[str, Any]:
        k = self.todo[item]
        reader = self._open()
        first, last = k * self.part_tiles, min((k + 1) * self.part_tiles, len(self.plan.tiles))
        side = self.grid.side
        origins = self.plan.tiles[first:last] * self.tile_px - self.margin_px
        pixels = np.stack([reader.region((int(ox), int(oy), side, side)) for ox, oy in origins])
        rows = self.plan.order[self.plan.start[first] : self.plan.start[last]]
        per_tile = np.diff(self.plan.start[first : last + 1])
        owner, token, weight = part_weights(
            self.cells_xy[rows] / (self.mpp / self.slide.mpp) - np.repeat(origins, per_tile, axis=0),
            rows,
            self.footprints,
            self.grid,
            1.0 / (self.mpp / self.slide.mpp),
        )
        return {
            "part": k,
            "pixels": pixels,
            "rows": rows,
            "per_tile": per_tile,
            "owner": owner,
            "token": token,
            "weight": weight.astype(np.float32),
        }


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


def _keep(item: dict[str, Any]) -> dict[str, Any]:
    """DataLoader conversion that leaves numpy arrays as they are."""
    return item


# ------------------------------------------------------------------------------------------ embedding


def embed_tiles(
    slide: Slide,
    cells: pd.DataFrame | str | Path,
    stain: StainNormalizer | str | Path | None,
    encoder: Encoder | TokenEncoder,
    out: str | Path,
    *,
    mpp: float = 0.5,
    tile_px: int = 512,
    margin_px: int = 64,
    batch_tiles: int = 4,
    part_tiles: int = 32,
    loader_workers: int = 1,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Embed every cell in tile-token mode; write ``out`` (``embeddings.npy``) and its ``.json``.

    Parameters
    ----------
    slide
        The open slide (its ``mpp`` is the level-0 pixel size).
    cells
        ``cells.parquet`` (path or table): ``x_px``, ``y_px`` and, where known, ``geometry`` (WKB outline,
        level-0 px) and ``area_um2``. Row ``i`` of the output is row ``i`` of this table.
    stain
        The slide's ``stain.json`` (or its normaliser); ``None`` keeps the slide's colours.
    encoder
        ``dinov3_vitl16`` or ``efficientnet_lite0`` from :func:`bitro.features.encoders.load_encoder` (or
        any :class:`TokenEncoder`); ``morphology`` is refused.
    out
        ``embeddings.npy``; the description goes to ``out`` with suffix ``.json``.
    mpp
        Pixel size the encoder sees (µm/px): the crop pixel size.
    tile_px, margin_px
        Tile core and context margin (px at ``mpp``), multiples of the token stride (ViT: the patch size).
    batch_tiles
        Tiles per encoder call.
    part_tiles
        Tiles per part: the unit of reading ahead and of resuming.
    loader_workers
        Processes reading parts ahead of the encoder (0: read in this process).
    progress
        Show a tqdm bar over cells.
    extra
        More keys for ``embeddings.json``.

    Returns
    -------
    pathlib.Path
        ``out``. ``embeddings.json`` records the encoder, the weights' sha256, ``mode`` (``tile-token``),
        ``mpp``, ``tile_size``, ``tile_margin``, ``image_size`` (the encoder's input side), the token
        stride, the footprint square, how many cells had an outline, a disk or only a centroid, and
        ``n_cells``.

    Raises
    ------
    TileSettingsError
        The encoder has no tokens (``morphology``), or the tile geometry does not fit its token grid.
    InputError
        The cell table lacks centroids.
    """
    tokens = token_encoder(encoder)
    if tile_px <= 0 or margin_px < 0 or batch_tiles <= 0 or part_tiles <= 0 or mpp <= 0:
        raise TileSettingsError(
            "tile-token settings",
            f"must be positive: tile_px={tile_px}, margin_px={margin_px}, "
            f"batch_tiles={batch_tiles}, part_tiles={part_tiles}, mpp={mpp}",
        )
    grid = tokens.grid(tile_px + 2 * margin_px)
    step = round(grid.stride)
    if tile_px % step or margin_px % step:
        raise TileSettingsError(
            "tile-token settings",
            f"tile_px ({tile_px}) and margin_px ({margin_px}) must be multiples of {tokens.name}'s token "
            f"stride ({step} px)",
        )
    out = Path(out)
    if isinstance(cells, pd.DataFrame):
        table = cells
    else:
        from bitro.preprocess.cells import read_cells  # here: it pulls geopandas in

        table = read_cells(cells)
    missing = {"x_px", "y_px"} - set(table.columns)
    if missing:
        raise InputError(str(cells) if isinstance(cells, str | Path) else "cells", f"lacks {sorted(missing)}")
    normalizer = read_normalizer(stain) if isinstance(stain, str | Path) else stain
    n = len(table)
    factor = mpp / slide.mpp
    xy = table[["x_px", "y_px"]].to_numpy(np.float64)
    plan = TilePlan.build(xy[:, 0] / factor, xy[:, 1] / factor, grid_shape(slide, mpp), tile_px)
    footprints = Footprints.from_cells(table, slide.mpp)
    describe = {
        "encoder": tokens.name,
        "weights_sha256": tokens.sha256,
        "dim": int(tokens.dim),
        "mode": "tile-token",
        "mpp": float(mpp),
        "tile_size": int(tile_px),
        "tile_margin": int(margin_px),
        "image_size": int(grid.side),
        "token_stride": float(grid.stride),
        "footprint_square": int(grid.fine),
        "pooling": "footprint",
        "footprints": footprints.kinds,
        "stain_method": "none" if normalizer is None or normalizer.identity else normalizer.source.method,
        "slide": slide.path.name,
        "n_tiles": len(plan.tiles),
        "batch_tiles": int(batch_tiles),
        "part_tiles": int(part_tiles),
        "n_cells": n,
        "dtype": "float16",
    } | (extra or {})
    if n == 0:
        with atomic_path(out) as tmp, tmp.open("wb") as handle:
            np.save(handle, np.zeros((0, tokens.dim), np.float16))
        with atomic_path(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(describe, indent=2) + "\n")
        return out
    partial = out.with_name(out.name + ".partial")
    sidecar = out.with_name(out.name + ".partial.json")
    done = _resume_state(partial, sidecar, describe)
    if not partial.exists():
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, tokens.dim)).flush()
        sidecar.write_text(json.dumps({"describe": describe, "done": []}))
    target = np.lib.format.open_memmap(partial, mode="r+")
    n_parts = math.ceil(len(plan.tiles) / part_tiles)
    todo = [k for k in range(n_parts) if k not in done]
    parts = _Parts(
        slide,
        normalizer,
        xy,
        footprints,
        plan,
        grid,
        mpp=mpp,
        tile_px=tile_px,
        margin_px=margin_px,
        part_tiles=part_tiles,
        todo=todo,
    )
    workers = loader_workers if len(todo) > 1 else 0
    loader = DataLoader(
        parts, batch_size=None, collate_fn=_keep, num_workers=workers, prefetch_factor=2 if workers else None
    )
    bar = tqdm(total=n, desc=f"embed tiles {slide.path.name}", unit="cell", disable=not progress)
    bar.update(int(sum(plan.start[min((k + 1) * part_tiles, len(plan.tiles))] - plan.start[k * part_tiles]
                       for k in done)))  # fmt: skip
    for item in loader:
        target[item["rows"]] = pool_part(tokens, grid, item, batch_tiles).astype(np.float16)
        target.flush()
        done.add(int(item["part"]))
        sidecar.write_text(json.dumps({"describe": describe, "done": sorted(done)}))
        bar.update(len(item["rows"]))
    bar.close()
    del target
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(describe, indent=2) + "\n")
    partial.replace(out)
    sidecar.unlink()
    return out


def pool_part(tokens: TokenEncoder, grid: TokenGrid, item: dict[str, Any], batch_tiles: int) -> np.ndarray:
    """Embeddings (cells of the part × dim, float32) from one encoder call per ``batch_tiles`` tiles.

    Each tile's cells are the weighted means of its tokens: a dense (cells × tokens) weight matrix times
    the token matrix, so the result does not depend on how cells or tiles are batched beyond the encoder.
    """
    pixels, per_tile = item["pixels"], item["per_tile"]
    owner, token, weight = item["owner"], item["token"], item["weight"]
    cell_start = np.r_[0, np.cumsum(per_tile)]
    entry_start = np.searchsorted(owner, cell_start)
    pooled = []
    for b0 in range(0, len(pixels), batch_tiles):
        batch = tokens.tokens(pixels[b0 : b0 + batch_tiles])
        device = batch.device
        for j in range(batch.shape[0]):
            t = b0 + j
            c0, c1, e0, e1 = cell_start[t], cell_start[t + 1], entry_start[t], entry_start[t + 1]
            w = torch.zeros((int(c1 - c0), batch.shape[1]), dtype=torch.float32, device=device)
            w[
                torch.from_numpy(owner[e0:e1] - c0).to(device),
                torch.from_numpy(token[e0:e1]).to(device),
            ] = torch.from_numpy(weight[e0:e1]).to(device)
            pooled.append(w @ batch[j])
    return torch.cat(pooled).cpu().numpy() if pooled else np.zeros((0, tokens.dim), np.float32)
