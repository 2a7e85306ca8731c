"""Bags: light references into a :class:`~bitro.folds.samples.SampleData`, and the model's view of them.

- ``st``: one bag per spot in tissue (the layout's ``in_tissue``) that holds at least one cell; spots
  outside tissue neither train nor score (their count is logged);
- ``xenium``: one bag per pseudo-spot (55 µm square) that holds at least one cell;
- ``bulk``: one bag per slide, made of all its patches that hold cells; training draws a random subset of
  its patches at each step (paper §3.4), prediction streams over all of them.

:func:`collate` packs bags into a :class:`bitro.model.batch.CellBatch` with targets; :func:`predict_bags`
runs a model over bags (bulk slides streamed in chunks of :data:`STREAM_CELLS` cells). Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bitro.folds.samples import SampleData
from bitro.model.batch import Bag as ModelBag
from bitro.model.batch import CellBatch, iter_chunks
from bitro.model.bitro import BiTro
from bitro.model.streaming import predict_streaming

#: Cells per chunk when a bulk slide is predicted by streaming: 20k keeps a 10⁶-cell slide at 2.9 GiB peak
#: (50k reached 4.1 GiB, mostly one chunk's GAT messages) at the same speed (benchmarks/bench_train.py).
STREAM_CELLS = 20_000


@dataclass(frozen=True)
class Bag:
    """A bag: units (positions in the sample's ``graph.unit_ids``) and the row of its target."""

    sample: int
    units: np.ndarray
    target_row: int
    key: str


def make_bags(sample: SampleData, index: int, *, unit_mask: np.ndarray | None = None) -> list[Bag]:
    """The bags of a sample (module docstring); ``unit_mask`` (by unit id) limits which units enter."""
    unit_ids = sample.graph.unit_ids
    keep = np.ones(len(unit_ids), dtype=bool) if unit_mask is None else np.asarray(unit_mask)[unit_ids]
    keep &= np.diff(sample.graph.cell_offsets) > 0
    if sample.in_tissue is not None:
        keep &= sample.in_tissue[unit_ids]
    positions = np.flatnonzero(keep)
    if sample.level == "bulk":
        if len(positions) == 0:
            return []
        return [Bag(index, positions, 0, sample.sample_id)]
    return [
        Bag(index, np.array([p]), int(unit_ids[p]), f"{sample.sample_id}:{unit_ids[p]}") for p in positions
    ]


def model_bag(
    bag: Bag, samples: Sequence[SampleData], units: np.ndarray | None = None
) -> tuple[ModelBag, np.ndarray]:
    """The model's view of ``bag`` (only ``units`` of it when given) and its cells' ``cells.parquet`` rows."""
    sample = samples[bag.sample]
    units = bag.units if units is None else units
    spans = [sample.unit_cells(int(p)) for p in units]
    take = np.concatenate([np.arange(c.start, c.stop) for c in spans])
    piece = ModelBag(
        features=sample.features[take],
        offsets_um=sample.offsets_um[take],
        phenotype=sample.phenotype[take],
        unit_sizes=np.array([c.stop - c.start for c in spans], dtype=np.int64),
        unit_edges=[sample.graph.unit(int(p))[1] for p in units],
    )
    return piece, sample.cell_rows[take]


def collate(
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    *,
    max_units: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[CellBatch, np.ndarray, list[np.ndarray]]:
    """Pack ``bags`` into a batch.

    Returns the :class:`CellBatch`, the raw targets (B × G) and, per bag, the ``cells.parquet`` rows of
    its cells in batch order. A bag with more than ``max_units`` units (bulk) contributes a random subset
    of that many, drawn from ``rng``.
    """
    pieces, rows, targets = [], [], []
    for bag in bags:
        units = bag.units
        if max_units is not None and len(units) > max_units:
            if rng is None:
                raise ValueError("subsampling units needs a random generator")
            units = np.sort(rng.choice(units, max_units, replace=False))
        piece, cell_rows = model_bag(bag, samples, units)
        pieces.append(piece)
        rows.append(cell_rows)
        targets.append(samples[bag.sample].targets[bag.target_row])
    return CellBatch.collate(pieces), np.stack(targets), rows


@torch.no_grad()
def predict_bags(
    model: BiTro,
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    *,
    batch_bags: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Model outputs (B × G, target space) for every bag, over all its units; bulk slides are streamed."""
    model.eval().to(device)
    out = np.zeros((len(bags), model.config.n_genes), dtype=np.float64)
    small = [i for i, bag in enumerate(bags) if samples[bag.sample].level != "bulk"]
    for start in range(0, len(small), batch_bags):
        chosen = small[start : start + batch_bags]
        pieces = [model_bag(bags[i], samples)[0] for i in chosen]
        prediction = model(CellBatch.collate(pieces).to(device)).prediction
        out[chosen] = prediction.float().cpu().numpy()
    for i, bag in enumerate(bags):
        if samples[bag.sample].level == "bulk":
            piece, _ = model_bag(bag, samples)
            out[i] = (
                predict_streaming(model, iter_chunks(piece, STREAM_CELLS)).prediction.float().cpu().numpy()
            )
    return out
