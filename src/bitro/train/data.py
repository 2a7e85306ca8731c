"""What the model trains on: each sample's cells, graphs and targets, cut into bags.

A sample is read once into a :class:`SampleData` (features, offsets of cells from their unit centre,
phenotype labels, the kNN graph, raw targets aligned to the cohort's genes by name). Bags are light
references into it:

- ``st``: one bag per spot in tissue (the layout's ``in_tissue``) that holds at least one cell; spots
  outside tissue neither train nor score (their count is logged);
- ``xenium``: one bag per pseudo-spot (55 µm square) that holds at least one cell;
- ``bulk``: one bag per slide, made of all its patches that hold cells; training draws a random subset of
  its patches at each step (paper §3.4, docs/methods.md), prediction streams over all of them.

:func:`collate` packs bags into a :class:`bitro.model.batch.CellBatch` with targets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np

from bitro.errors import InputError
from bitro.features.embeddings import read_embeddings
from bitro.features.graph import UnitGraphs, read_graph
from bitro.features.phenotype import Phenotypes
from bitro.features.reduce import PCABasis
from bitro.genes.selection import align_genes
from bitro.io.validate import require_file
from bitro.model.batch import Bag as ModelBag
from bitro.model.batch import CellBatch
from bitro.preprocess.cells import read_cells
from bitro.preprocess.units import read_units

log = logging.getLogger(__name__)


@dataclass
class SampleData:
    """Everything of one sample the model sees; cell arrays are in ``graph.cell_index`` order."""

    sample_id: str
    level: str
    features: np.ndarray  # (n, F) float32, cells grouped by unit
    offsets_um: np.ndarray  # (n, 2) float32
    phenotype: np.ndarray  # (n,) int64
    cell_rows: np.ndarray  # (n,) rows of cells.parquet
    graph: UnitGraphs
    unit_xy_um: np.ndarray  # (n_units, 2) centres of the units in ``graph.unit_ids`` order
    targets: np.ndarray  # (n_rows, G) raw counts or TPM; ST/Xenium row = unit id, bulk: one row
    space: str
    in_tissue: np.ndarray | None = None  # (n_units,) by unit id; ST only: spots outside tissue are left out

    def unit_cells(self, position: int) -> slice:
        return slice(int(self.graph.cell_offsets[position]), int(self.graph.cell_offsets[position + 1]))


@dataclass(frozen=True)
class Bag:
    """A bag: units (positions in the sample's ``graph.unit_ids``) and the row of its target."""

    sample: int
    units: np.ndarray
    target_row: int
    key: str


def sample_features(
    sample_dir: Path, *, scope: str, basis: PCABasis | None = None
) -> tuple[np.ndarray, dict]:
    """Per-cell features: ``features.npy`` (``sample`` scope) or the embeddings projected on ``basis``."""
    if scope == "sample":
        path = require_file(sample_dir / "features.npy", "cell features")
        return np.load(path, mmap_mode="r"), {"scope": "sample"}
    if basis is None:
        raise ValueError("cohort scope needs the fold's PCA basis")
    embeddings, info = read_embeddings(sample_dir / "embeddings.npy")
    return basis.transform(embeddings), {"scope": "cohort", "encoder": info.get("encoder")}


def load_sample(
    sample_dir: str | Path,
    *,
    genes: Sequence[str],
    features: np.ndarray,
    phenotypes: Phenotypes | None,
) -> SampleData:
    """Read one sample's cells, graph, units and targets; ``features`` are its per-cell features.

    Raises :class:`InputError` naming the file when the pieces disagree (row counts, genes).
    """
    sample_dir = Path(sample_dir)
    cells = read_cells(sample_dir / "cells.parquet", geometry=False)
    if len(features) != len(cells):
        raise InputError(
            sample_dir / "cells.parquet", f"has {len(cells)} cells but the features have {len(features)} rows"
        )
    graph = read_graph(sample_dir / "graph.npz")
    units = read_units(sample_dir / "units.parquet")
    targets_path = require_file(sample_dir / "targets.h5ad", "targets")
    adata = align_genes(ad.read_h5ad(targets_path), genes, source=targets_path)
    meta = adata.uns.get("bitro", {})
    level = str(meta.get("level", "st"))
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    if level != "bulk" and len(adata) != len(units):
        raise InputError(targets_path, f"has {len(adata)} rows for {len(units)} units")
    rows = graph.cell_index.astype(np.int64)
    feats = np.asarray(features[rows], dtype=np.float32)
    centres = units[["x_um", "y_um"]].to_numpy(np.float64)[graph.unit_ids]
    unit_of_cell = np.repeat(np.arange(len(graph.unit_ids)), np.diff(graph.cell_offsets))
    xy = cells[["x_um", "y_um"]].to_numpy(np.float64)[rows]
    labels = phenotypes.assign(feats).astype(np.int64) if phenotypes is not None else np.full(len(rows), -1)
    in_tissue = None
    if level == "st" and "in_tissue" in units:
        in_tissue = units["in_tissue"].to_numpy().astype(bool)
        outside = int((~in_tissue).sum())
        if outside:
            log.info(
                "%s: %d of %d spots outside tissue (in_tissue 0) neither train nor score",
                sample_dir.name,
                outside,
                len(units),
            )
    usable = np.diff(graph.cell_offsets) > 0
    if in_tissue is not None:
        usable &= in_tissue[graph.unit_ids]
    if not usable.any():
        raise InputError(
            sample_dir / "cells.parquet",
            f"no {'spot in tissue' if in_tissue is not None else 'unit'} holds a cell: the sample has "
            "nothing to train on or score (an empty sample); check its segmentation or leave it out of "
            "the sample sheet",
        )
    return SampleData(
        sample_id=str(meta.get("sample_id", sample_dir.name)),
        level=level,
        features=feats,
        offsets_um=(xy - centres[unit_of_cell]).astype(np.float32),
        phenotype=labels,
        cell_rows=rows,
        graph=graph,
        unit_xy_um=centres,
        targets=np.asarray(x, dtype=np.float64),
        space=str(meta.get("space", "counts")),
        in_tissue=in_tissue,
    )


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
