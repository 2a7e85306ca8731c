"""What the model sees of one sample, read once: features, cell offsets, phenotypes, graph and targets.

:func:`load_sample` reads a sample folder's ``cells.parquet``, ``graph.npz``, ``units.parquet`` and
``targets.h5ad`` (targets aligned to the cohort's genes by name) into a :class:`SampleData`;
:func:`sample_features` reads its per-cell features (``features.npy``, or ``embeddings.npy`` projected on a
fold's PCA basis). Nothing is written. The sample is cut into bags by :mod:`bitro.folds.bags`.
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
    level: str | None = None,
) -> SampleData:
    """Read one sample's cells, graph, units and targets; ``features`` are its per-cell features.

    ``level`` (``st``, ``bulk`` or ``xenium``) reads a sample for prediction only: ``targets.h5ad`` is not
    read (a slide without expression has none), the sample is cut into bags as ``level`` says and its
    targets are NaN (one row per unit, or one for ``bulk``). Without it the level is the targets'.

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
    if level is None:
        targets_path = require_file(sample_dir / "targets.h5ad", "targets")
        adata = align_genes(ad.read_h5ad(targets_path), genes, source=targets_path)
        meta = adata.uns.get("bitro", {})
        level = str(meta.get("level", "st"))
        x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
        if level != "bulk" and len(adata) != len(units):
            raise InputError(targets_path, f"has {len(adata)} rows for {len(units)} units")
    else:
        meta = {"space": "tpm" if level == "bulk" else "counts"}
        x = np.full((1 if level == "bulk" else len(units), len(genes)), np.nan)
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
