"""Where tiles and tokens sit: a slide's tile plan and the token grid of an encoder's square input.

The slide's ``mpp`` grid (:mod:`bitro.preprocess.regions`) is cut into tiles whose cores of ``tile_px`` px
partition it; a cell is served by the one tile whose core holds its centroid (:class:`TilePlan`). On a
tile, :class:`TokenGrid` says where each output token of the encoder is centred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
