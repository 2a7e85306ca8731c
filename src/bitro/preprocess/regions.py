"""Reading slide regions on a grid of a chosen pixel size, whatever the slide's own levels are.

A grid at ``mpp`` µm/px has pixel ``(u, v)`` covering level-0 pixels ``[u·f, (u+1)·f) × [v·f, (v+1)·f)``
with ``f = mpp / slide.mpp``. Every stage that looks at pixels (stain fitting, segmentation, crops) reads
through :func:`read_at_mpp`, so that a 0.25 µm/px scan and its 0.5 µm/px downsample give the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bitro.io.slides import Slide

# Ratios this close to an integer, on an aligned origin, are read by exact block averaging.
_INTEGER_TOLERANCE = 1e-6


def read_at_mpp(slide: Slide, box: tuple[int, int, int, int], mpp: float) -> np.ndarray:
    """Read ``box = (x, y, width, height)`` of the ``mpp`` grid as height × width × 3 uint8 RGB.

    The region is read from the pyramid level nearest to (and not coarser than) ``mpp`` and resampled:
    area averaging when shrinking, bilinear when enlarging. Pixels outside the slide are white, the
    slide reader's background, never black.
    """
    x, y, width, height = (int(v) for v in box)
    if width <= 0 or height <= 0:
        raise ValueError(f"region size must be positive, got {width}×{height}")
    factor = mpp / slide.mpp
    level = slide.best_level_for_downsample(factor)
    level_ds = slide.level_downsamples[level]
    # Source window in level pixels (float), then the whole pixels that cover it.
    sx0, sy0 = x * factor / level_ds, y * factor / level_ds
    sx1, sy1 = (x + width) * factor / level_ds, (y + height) * factor / level_ds
    lx0, ly0 = math.floor(sx0 + _INTEGER_TOLERANCE), math.floor(sy0 + _INTEGER_TOLERANCE)
    lx1, ly1 = math.ceil(sx1 - _INTEGER_TOLERANCE), math.ceil(sy1 - _INTEGER_TOLERANCE)
    region = slide.read_region(
        (round(lx0 * level_ds), round(ly0 * level_ds)), level, (max(1, lx1 - lx0), max(1, ly1 - ly0))
    )
    ratio = factor / level_ds
    aligned = abs(sx0 - lx0) < _INTEGER_TOLERANCE and abs(sy0 - ly0) < _INTEGER_TOLERANCE
    if aligned and abs(ratio - 1.0) < _INTEGER_TOLERANCE:
        return np.ascontiguousarray(region[:height, :width])
    k = round(ratio)
    if aligned and k > 1 and abs(ratio - k) < _INTEGER_TOLERANCE:
        block = region[: height * k, : width * k].astype(np.float32)
        block = block.reshape(height, k, width, k, 3).mean(axis=(1, 3))
        return np.clip(np.rint(block), 0, 255).astype(np.uint8)
    resample = Image.Resampling.BOX if ratio > 1 else Image.Resampling.BILINEAR
    source_box = (sx0 - lx0, sy0 - ly0, sx1 - lx0, sy1 - ly0)
    resized = Image.fromarray(region).resize((width, height), resample, box=source_box)
    return np.asarray(resized)


def grid_shape(slide: Slide, mpp: float) -> tuple[int, int]:
    """(width, height) of the whole slide on the ``mpp`` grid."""
    factor = mpp / slide.mpp
    w0, h0 = slide.dimensions
    return max(1, math.ceil(w0 / factor)), max(1, math.ceil(h0 / factor))


@dataclass(frozen=True)
class Tile:
    """One tile of a tiling on the ``mpp`` grid: the core it owns and the padded box it is read with."""

    index: int
    core: tuple[int, int, int, int]
    box: tuple[int, int, int, int]

    @property
    def offset(self) -> tuple[int, int]:
        """(x, y) of the core's origin inside the padded box."""
        return self.core[0] - self.box[0], self.core[1] - self.box[1]


def iter_tiles(
    width: int, height: int, *, tile: int, overlap: int, keep: np.ndarray | None = None
) -> Iterator[Tile]:
    """Tiles of ``tile`` px cores covering ``width × height``, each read with ``overlap`` px of margin.

    Cores partition the grid, so an object assigned to the core holding its centre is kept exactly once.
    ``keep`` (rows × cols of booleans) drops tiles, e.g. those without tissue.
    """
    n_cols, n_rows = math.ceil(width / tile), math.ceil(height / tile)
    index = 0
    for row in range(n_rows):
        for col in range(n_cols):
            if keep is not None and not keep[row, col]:
                continue
            x, y = col * tile, row * tile
            core = (x, y, min(tile, width - x), min(tile, height - y))
            box = (x - overlap, y - overlap, core[2] + 2 * overlap, core[3] + 2 * overlap)
            yield Tile(index=index, core=core, box=box)
            index += 1
