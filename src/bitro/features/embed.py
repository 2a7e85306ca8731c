"""Crop mode embedding: every cell's crop through the encoder, written to ``embeddings.npy`` + ``.json``.

Chunks of ``crops.zarr`` are read by a ``torch.utils.data.DataLoader`` in worker processes while the
encoder runs on the previous chunk, so reading overlaps compute. Embeddings go into a float16 memory map
``embeddings.npy.partial`` whose sidecar lists the finished chunks: an interrupted run resumes from the
first unfinished chunk, and the file is renamed to ``embeddings.npy`` only when every chunk is in.

``embeddings.json`` records the encoder name, the sha256 of its weights, the mode, crop size and µm/px,
the model input size, pooling and the cell count (docs/formats.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bitro._atomic import atomic_path
from bitro.features.embeddings import read_embeddings
from bitro.features.encoders import Encoder
from bitro.features.morphology import CellOutlines
from bitro.preprocess.crops import read_crops

__all__ = ["embed_crops", "read_embeddings"]


class _ChunkDataset(Dataset):
    """Chunks of a crops array; each worker opens the array itself."""

    def __init__(self, path: Path, chunk: int, indices: list[int]) -> None:
        self.path, self.chunk, self.indices = path, chunk, indices
        self._array = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[int, np.ndarray]:
        if self._array is None:
            self._array = read_crops(self.path)
        k = self.indices[item]
        return k, np.asarray(self._array[k * self.chunk : (k + 1) * self.chunk])


def embed_crops(
    crops_path: str | Path,
    encoder: Encoder,
    out: str | Path,
    *,
    batch_size: int = 256,
    loader_workers: int = 1,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    outlines: CellOutlines | None = None,
) -> Path:
    """Embed every crop of ``crops.zarr`` and write ``out`` (``embeddings.npy``) and its ``.json``.

    Parameters
    ----------
    crops_path
        A complete ``crops.zarr``.
    encoder
        From :func:`bitro.features.encoders.load_encoder`.
    out
        ``embeddings.npy``; the description goes to ``out`` with suffix ``.json``.
    batch_size
        Crops per encoder call.
    loader_workers
        Processes reading chunks ahead of the encoder (0: read in this process).
    progress
        Show a tqdm bar over cells.
    extra
        More keys for ``embeddings.json`` (e.g. image size, pooling).
    outlines
        ``morphology`` encoders: the cells' outlines, their nucleus masks (else each nucleus is found in its
        crop). Other encoders ignore them.
    """
    crops_path, out = Path(crops_path), Path(out)
    crops = read_crops(crops_path)
    n, chunk = crops.shape[0], int(crops.chunks[0])
    describe = {
        "encoder": encoder.name,
        "weights_sha256": encoder.sha256,
        "dim": encoder.dim,
        "mode": "crop",
        "crop_size": int(crops.attrs["size"]),
        "mpp": float(crops.attrs["mpp"]),
        "stain_method": crops.attrs.get("stain_method"),
        "n_cells": n,
        "dtype": "float16",
    } | (extra or {})
    measures_nuclei = bool(getattr(encoder, "uses_nucleus_masks", False))
    use_outlines = outlines is not None and measures_nuclei
    if measures_nuclei:
        describe["nucleus_masks"] = "outlines" if use_outlines else "crop"
    partial = out.with_name(out.name + ".partial")
    sidecar = out.with_name(out.name + ".partial.json")
    done = _resume_state(partial, sidecar, describe)
    if not partial.exists():
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n, encoder.dim)).flush()
        sidecar.write_text(json.dumps({"describe": describe, "done": []}))
    target = np.lib.format.open_memmap(partial, mode="r+")
    todo = [k for k in range(math.ceil(n / chunk)) if k not in done]
    loader = DataLoader(
        _ChunkDataset(crops_path, chunk, todo),
        batch_size=None,
        num_workers=loader_workers if len(todo) > 1 else 0,
        prefetch_factor=2 if loader_workers and len(todo) > 1 else None,
    )
    bar = tqdm(total=n, desc=f"embed {crops_path.parent.name}", unit="cell", disable=not progress)
    bar.update(sum(min(chunk, n - k * chunk) for k in done))
    for k, block in loader:
        block = block.numpy() if isinstance(block, torch.Tensor) else block
        for start in range(0, len(block), batch_size):
            rows = slice(k * chunk + start, k * chunk + min(start + batch_size, len(block)))
            crops_batch = block[start : start + batch_size]
            if use_outlines:
                assert outlines is not None
                embedded = encoder.embed(crops_batch, outlines.masks(rows.start, rows.stop))  # type: ignore[call-arg]
            else:
                embedded = encoder.embed(crops_batch)
            target[rows] = embedded.astype(np.float16)
        target.flush()
        done.add(int(k))
        sidecar.write_text(json.dumps({"describe": describe, "done": sorted(done)}))
        bar.update(len(block))
    bar.close()
    del target
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(describe, indent=2) + "\n")
    partial.replace(out)
    sidecar.unlink()
    return out


def _resume_state(partial: Path, sidecar: Path, describe: dict[str, Any]) -> set[int]:
    """Chunks already embedded by an interrupted run with the same settings (else start afresh)."""
    if partial.exists() and sidecar.exists():
        try:
            state = json.loads(sidecar.read_text())
            if state.get("describe") == json.loads(json.dumps(describe)):
                return set(state["done"])
        except (json.JSONDecodeError, KeyError):
            pass
    partial.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return set()
