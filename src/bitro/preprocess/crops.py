"""Cell crops: ``size × size`` RGB at ``mpp`` µm/px around each cell centroid, stain-normalised.

Crops are cut from tiles of the ``mpp`` grid (:mod:`bitro.preprocess.regions`), each tile read once from
the pyramid level nearest the target resolution, resampled, and normalised as a whole. Pixels beyond the
slide's edge come back as the reader's white background (then normalised like glass), so a cell at the
edge gets a padded crop, never a black one, whatever level the pixels come from.

``crops.zarr`` holds one uint8 array ``(n_cells, size, size, 3)``, row ``i`` for row ``i`` of
``cells.parquet``, chunked by ``chunk`` cells. It is written under ``<name>.partial`` and renamed when
complete; an interrupted run resumes from the chunks already written (listed in the array's attributes).
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm

from bitro.errors import ConfigError, InputError
from bitro.io.slides import Slide, open_slide
from bitro.preprocess.regions import read_at_mpp
from bitro.preprocess.stain import StainModel, StainNormalizer

Normalize = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CropParams:
    """Crop geometry: ``size`` px at ``mpp`` µm/px; tiles of ``tile`` px; ``chunk`` cells per chunk."""

    size: int = 48
    mpp: float = 0.5
    tile: int = 512
    chunk: int = 4096

    def __post_init__(self) -> None:
        if self.size <= 0 or self.mpp <= 0 or self.tile <= 0 or self.chunk <= 0:
            raise ConfigError("crops", f"crop settings must be positive, got {self}")


def crop_origins(x_px: np.ndarray, y_px: np.ndarray, slide_mpp: float, params: CropParams) -> np.ndarray:
    """Top-left corners (n × 2, grid px) of crops centred on level-0 centroids."""
    factor = params.mpp / slide_mpp
    gx = np.asarray(x_px, np.float64) / factor
    gy = np.asarray(y_px, np.float64) / factor
    half = params.size / 2.0
    return np.column_stack([np.floor(gx - half + 0.5), np.floor(gy - half + 0.5)]).astype(np.int64)


class CropReader:
    """Cuts crops of one slide, reading each tile once and keeping the last few in memory."""

    def __init__(
        self, slide: Slide, params: CropParams, normalize: Normalize | None = None, cache: int = 8
    ) -> None:
        self.slide = slide
        self.params = params
        self.normalize = normalize
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache = cache

    def region(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Pixels of ``box = (x, y, width, height)`` on the ``mpp`` grid, stain-normalised (not cached).

        Beyond the slide's edge the pixels are the reader's white background, normalised like glass.
        """
        pixels = read_at_mpp(self.slide, box, self.params.mpp)
        return pixels if self.normalize is None else self.normalize(pixels)

    def _tile(self, tx: int, ty: int) -> np.ndarray:
        key = (tx, ty)
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        t, s = self.params.tile, self.params.size
        pixels = self.region((tx * t, ty * t, t + s, t + s))
        self._tiles[key] = pixels
        if len(self._tiles) > self._cache:
            self._tiles.popitem(last=False)
        return pixels

    def crops(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Crops (n × size × size × 3 uint8) centred on the level-0 centroids, in the order given."""
        p = self.params
        origins = crop_origins(x_px, y_px, self.slide.mpp, p)
        out = np.empty((len(origins), p.size, p.size, 3), dtype=np.uint8)
        tiles = np.floor_divide(origins, p.tile)
        order = np.lexsort((tiles[:, 0], tiles[:, 1]))
        for i in order:
            tx, ty = int(tiles[i, 0]), int(tiles[i, 1])
            pixels = self._tile(tx, ty)
            ox, oy = origins[i] - tiles[i] * p.tile
            out[i] = pixels[oy : oy + p.size, ox : ox + p.size]
        return out


def iter_crop_chunks(
    slide: Slide,
    x_px: np.ndarray,
    y_px: np.ndarray,
    *,
    params: CropParams,
    normalize: Normalize | None = None,
    chunks: list[int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream ``(chunk index, crops)`` for consecutive chunks of ``params.chunk`` cells.

    This is the streaming path: an encoder can consume the chunks without anything written to disk.
    """
    reader = CropReader(slide, params, normalize)
    n_chunks = math.ceil(len(x_px) / params.chunk)
    for k in range(n_chunks) if chunks is None else chunks:
        sl = slice(k * params.chunk, min(len(x_px), (k + 1) * params.chunk))
        yield k, reader.crops(x_px[sl], y_px[sl])


# Per-process state of the worker pool.
_WORKER: dict[str, Any] = {}


def _init_worker(path: str, mpp: float, params: dict, stain: tuple[dict, dict | None] | None) -> None:
    slide = open_slide(path, mpp=mpp)
    normalize = None
    if stain is not None:
        source, target = stain
        normalize = StainNormalizer(
            StainModel.from_dict(source), None if target is None else StainModel.from_dict(target)
        )
    _WORKER["reader"] = CropReader(slide, CropParams(**params), normalize)


def _run_chunk(job: tuple[int, np.ndarray, np.ndarray]) -> tuple[int, np.ndarray]:
    k, x, y = job
    return k, _WORKER["reader"].crops(x, y)


def write_crops(
    slide: Slide,
    x_px: np.ndarray,
    y_px: np.ndarray,
    out: str | Path,
    *,
    params: CropParams | None = None,
    normalizer: StainNormalizer | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write ``crops.zarr`` for cells at level-0 centroids ``x_px``, ``y_px`` (resuming a partial run).

    Parameters
    ----------
    slide
        The open slide.
    x_px, y_px
        Cell centroids in level-0 pixels, in ``cells.parquet`` row order.
    out
        The ``.zarr`` folder to write.
    params
        Crop geometry (:class:`CropParams`).
    normalizer
        Stain normaliser applied to every tile; ``None`` keeps the slide's colours.
    workers
        Processes; each opens the slide itself.
    progress
        Show a tqdm bar over cells.

    Returns
    -------
    pathlib.Path
        ``out``. Attributes of the array: ``size``, ``mpp``, ``n_cells``, ``stain_method``, ``slide``.
    """
    params = params or CropParams()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    n = len(x_px)
    attrs = {
        "size": params.size,
        "mpp": params.mpp,
        "n_cells": n,
        "chunk": params.chunk,
        "stain_method": "none" if normalizer is None or normalizer.identity else normalizer.source.method,
        "slide": str(slide.path),
        "slide_mpp": slide.mpp,
    }
    array = _open_partial(partial, n, params, attrs)
    done = set(array.attrs.get("done_chunks", []))
    n_chunks = math.ceil(n / params.chunk)
    todo = [k for k in range(n_chunks) if k not in done]
    bar = tqdm(total=n, desc=f"crops {slide.path.name}", unit="cell", disable=not progress)
    bar.update(sum(min(params.chunk, n - k * params.chunk) for k in done))
    x_px, y_px = np.asarray(x_px, np.float64), np.asarray(y_px, np.float64)
    for k, crops in _map_chunks(slide, x_px, y_px, params, normalizer, todo, workers):
        start = k * params.chunk
        array[start : start + len(crops)] = crops
        done.add(k)
        array.attrs["done_chunks"] = sorted(done)
        bar.update(len(crops))
    bar.close()
    array.attrs["complete"] = True
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def _open_partial(partial: Path, n: int, params: CropParams, attrs: dict[str, Any]) -> zarr.Array:
    """The partial array to continue, or a new one when none matches these settings."""
    if partial.exists():
        try:
            array = zarr.open_array(str(partial), mode="r+")
            same = all(array.attrs.get(k) == v for k, v in attrs.items())
            if same and array.shape == (n, params.size, params.size, 3):
                return array
        except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
            pass
        shutil.rmtree(partial)
    array = zarr.create_array(
        str(partial),
        shape=(n, params.size, params.size, 3),
        chunks=(min(params.chunk, max(n, 1)), params.size, params.size, 3),
        dtype="uint8",
    )
    array.attrs.update(attrs | {"done_chunks": [], "complete": False})
    return array


def _map_chunks(
    slide: Slide,
    x_px: np.ndarray,
    y_px: np.ndarray,
    params: CropParams,
    normalizer: StainNormalizer | None,
    todo: list[int],
    workers: int,
) -> Iterator[tuple[int, np.ndarray]]:
    if workers <= 1 or len(todo) <= 1:
        yield from iter_crop_chunks(slide, x_px, y_px, params=params, normalize=normalizer, chunks=todo)
        return
    stain = None
    if normalizer is not None and not normalizer.identity:
        assert normalizer.target is not None
        stain = (normalizer.source.to_dict(), normalizer.target.to_dict())
    init = (str(slide.path), slide.mpp, asdict(params), stain)
    jobs = []
    for k in todo:
        sl = slice(k * params.chunk, min(len(x_px), (k + 1) * params.chunk))
        jobs.append((k, x_px[sl], y_px[sl]))
    context = multiprocessing.get_context("forkserver")  # workers do not inherit the caller's heap
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        yield from pool.map(_run_chunk, jobs)


def read_crops(path: str | Path) -> zarr.Array:
    """Open a complete ``crops.zarr`` read-only."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "crops not found")
    try:
        array = zarr.open_array(str(path), mode="r")
    except (OSError, ValueError, zarr.errors.BaseZarrError) as exc:
        raise InputError(path, f"is not a crops array ({exc})") from exc
    if not array.attrs.get("complete", False):
        raise InputError(path, "crops array is incomplete (an interrupted run?)")
    return array
