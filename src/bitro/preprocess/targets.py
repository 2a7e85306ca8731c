"""Targets: the measured expression of each unit, aligned to ``units.parquet``.

``targets.h5ad`` (docs/formats.md):

- ST: units × genes raw counts, row *i* is unit *i* (matched by spot barcode, never by row order).
- Xenium: units × genes, each unit's cells' counts summed (a pseudo-spot), ``obs["n_cells"]``.
- Bulk: one row, the slide's TPM profile (the whole slide is one bag), obs name = sample id.

Every file carries ``obsm["spatial"]`` (level-0 px; the slide centre for bulk), ``var["gene_ids"]`` where
known and ``uns["bitro"]`` = ``{"sample_id", "patient_id", "level", "space", "mpp", "params"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from bitro._atomic import atomic_path
from bitro.errors import ConfigError, InputError
from bitro.io.sample import Sample

SPACE = {"st": "counts", "xenium": "counts", "bulk": "tpm"}


def make_targets(sample: Sample, units: pd.DataFrame) -> ad.AnnData:
    """Build the targets of ``sample`` on ``units`` (see the module docstring for each level).

    Raises
    ------
    bitro.errors.ConfigError
        The sample is unlabelled (the ``slides`` layout): it has no expression to make targets of.
    """
    if sample.expression is None:
        raise ConfigError(sample.slide_path, unlabelled_targets(sample.sample_id))
    if sample.kind == "st":
        adata = _spot_targets(sample, units)
    elif sample.kind == "xenium":
        adata = _pseudo_spot_targets(sample, units)
    elif sample.kind == "bulk":
        adata = _bulk_targets(sample)
    else:
        raise ValueError(f"unknown sample kind {sample.kind!r}")
    if "gene_ids" in sample.expression.var:
        adata.var["gene_ids"] = sample.expression.var["gene_ids"].astype(str).to_numpy()
    adata.uns["bitro"] = {
        "sample_id": sample.sample_id,
        "patient_id": sample.patient_id,
        "level": sample.kind,
        "space": SPACE[sample.kind],
        "mpp": float(sample.mpp),
        "params": {"n_units": len(units)},
    }
    return adata


def unlabelled_targets(sample_id: str) -> str:
    """Why an unlabelled sample (the ``slides`` layout) has no targets."""
    return (
        f"sample {sample_id!r} is a slide without expression (format slides, prediction only): it has no "
        "targets; a trained model is applied to it instead (targets are made for the hest, tcga and xenium "
        "layouts)"
    )


def write_targets(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``targets.h5ad`` atomically."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _spot_targets(sample: Sample, units: pd.DataFrame) -> ad.AnnData:
    expression = sample.expression
    barcodes = units["barcode"].astype(str).to_numpy()
    position = pd.Index(expression.obs_names.astype(str)).get_indexer(barcodes)
    if (position < 0).any():
        missing = barcodes[position < 0][:5].tolist()
        raise InputError(sample.slide_path, f"units have spots absent from the expression table: {missing}")
    x = sparse.csr_matrix(expression.X)[position]
    return _anndata(x, units, expression.var_names, extra_obs={"barcode": barcodes})


def _pseudo_spot_targets(sample: Sample, units: pd.DataFrame) -> ad.AnnData:
    expression = sample.expression
    xy = np.asarray(expression.obsm["spatial"], dtype=np.float64)
    unit_of_cell = assign_to_squares(xy, units, mpp=sample.mpp)
    inside = unit_of_cell >= 0
    membership = sparse.csr_matrix(
        (np.ones(int(inside.sum())), (unit_of_cell[inside], np.flatnonzero(inside))),
        shape=(len(units), len(xy)),
    )
    x = sparse.csr_matrix(membership @ sparse.csr_matrix(expression.X, dtype=np.float64))
    n_cells = np.asarray(membership.sum(axis=1)).ravel().astype(np.int64)
    return _anndata(x, units, expression.var_names, extra_obs={"n_cells": n_cells})


def _bulk_targets(sample: Sample) -> ad.AnnData:
    expression = sample.expression
    if expression.n_obs != 1:
        raise InputError(sample.slide_path, f"bulk sample has {expression.n_obs} profiles, expected 1")
    with sample.open_slide() as slide:
        w, h = slide.dimensions
    adata = ad.AnnData(
        X=np.asarray(expression.X.toarray() if sparse.issparse(expression.X) else expression.X, np.float64),
        obs=pd.DataFrame(index=pd.Index([sample.sample_id])),
        var=pd.DataFrame(index=expression.var_names.copy()),
    )
    adata.obsm["spatial"] = np.array([[w / 2, h / 2]])
    return adata


def assign_to_squares(xy_px: np.ndarray, units: pd.DataFrame, *, mpp: float) -> np.ndarray:
    """Index of the grid square containing each point, −1 outside every unit.

    The squares are those of :func:`bitro.preprocess.units.grid_units`: side ``diameter_um / mpp`` px,
    tiling the slide from its origin, so they never overlap.
    """
    if len(units) == 0:
        return np.full(len(xy_px), -1, dtype=np.int64)
    side_px = float(units["diameter_um"].iloc[0]) / mpp
    col = np.floor(units["x_px"].to_numpy() / side_px).astype(np.int64)
    row = np.floor(units["y_px"].to_numpy() / side_px).astype(np.int64)
    grid = np.full((row.max() + 2, col.max() + 2), -1, dtype=np.int64)
    grid[row, col] = np.arange(len(units))
    pc = np.floor(xy_px[:, 0] / side_px).astype(np.int64)
    pr = np.floor(xy_px[:, 1] / side_px).astype(np.int64)
    valid = (pc >= 0) & (pr >= 0) & (pc < grid.shape[1]) & (pr < grid.shape[0])
    out = np.full(len(xy_px), -1, dtype=np.int64)
    out[valid] = grid[pr[valid], pc[valid]]
    return out


def _anndata(
    x: sparse.spmatrix, units: pd.DataFrame, genes: pd.Index, *, extra_obs: dict[str, Any]
) -> ad.AnnData:
    obs = pd.DataFrame(
        {"unit_id": units["unit_id"].to_numpy(), "in_tissue": units["in_tissue"].to_numpy(), **extra_obs},
        index=pd.Index(units["unit_id"].astype(str).to_numpy()),
    )
    adata = ad.AnnData(X=sparse.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes.copy()))
    adata.obsm["spatial"] = units[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    return adata
