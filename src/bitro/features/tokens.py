"""Tile-token mode: one encoder forward per tile, every cell of the tile pooled from the tokens under it.

Crop mode (:mod:`bitro.features.embed`) runs the encoder once per cell, on its 48 × 48 crop (resized to
224 px for DINOv3). Tile-token mode runs it once per *tile* of the slide, at the crop pixel size (0.5 µm/px
by default) without resizing, and reads each cell off the output tokens, so one forward serves the few
hundred cells of a tile.

This module runs the mode (reading parts ahead, pooling, resuming); the pieces it runs live beside it:
:mod:`bitro.features.tiling` (where tiles and tokens sit), :mod:`bitro.features.footprints` (each cell's
footprint and its area under each token) and :mod:`bitro.features.token_encoders` (the encoders' tokens).

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm.auto import tqdm

from bitro._atomic import atomic_path
from bitro.errors import InputError, TileSettingsError
from bitro.features.embed import _resume_state
from bitro.features.encoders import Encoder
from bitro.features.footprints import DISK_VERTICES, Footprints, coverage, part_weights
from bitro.features.tiling import TilePlan, TokenGrid
from bitro.features.token_encoders import CNNTokens, TokenEncoder, ViTTokens, token_encoder
from bitro.io.slides import Slide, open_slide
from bitro.preprocess.cells import read_cells
from bitro.preprocess.crops import CropParams, CropReader
from bitro.preprocess.regions import grid_shape
from bitro.preprocess.stain import StainNormalizer, read_normalizer

__all__ = [
    "DISK_VERTICES",
    "CNNTokens",
    "Footprints",
    "TilePlan",
    "TokenEncoder",
    "TokenGrid",
    "ViTTokens",
    "coverage",
    "embed_tiles",
    "part_weights",
    "pool_part",
    "token_encoder",
]


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


def _keep(item: dict[str, Any]) -> dict[str, Any]:
    """DataLoader conversion that leaves numpy arrays as they are."""
    return item


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
    table = cells if isinstance(cells, pd.DataFrame) else read_cells(cells)
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
