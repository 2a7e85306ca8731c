"""``cells.h5ad``: one slide's pseudo-cell profiles (paper eq. 10), cells × genes at their centroids.

The profiles are those :func:`bitro.model.pseudocells.pseudo_cells` computes: each bag's predicted amounts
(counts or TPM) split over its cells by the model's attention, so a bag's cells add up to its prediction.
``obsm["spatial"]`` holds each cell's centroid in level-0 pixels, as ``spots.h5ad`` holds its spots; when
the slide's images are given, ``uns["spatial"]`` carries them too, with the median nucleus diameter as
``spot_diameter_fullres``, so ``scanpy.pl.spatial`` draws the cells over the H&E as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from bitro.io.slides import Slide
from bitro.io.thumbnails import VisiumImages, visium_images
from bitro.predict._record import amounts, bitro_uns, gene_names
from bitro.predict.spots import spatial_uns, write_h5ad

#: Columns of a cell table (``cells.parquet``) copied into ``obs`` where present.
OBS_COLUMNS = ("cell_id", "unit_id", "class", "area_um2")


def cell_diameter_px(cells: pd.DataFrame, mpp: float) -> float:
    """Median diameter of a disc of each cell's area, in level-0 pixels (10 µm when no area is known)."""
    area = cells["area_um2"].to_numpy(np.float64) if "area_um2" in cells else np.zeros(0)
    area = area[np.isfinite(area) & (area > 0)]
    diameter_um = float(np.median(2.0 * np.sqrt(area / np.pi))) if len(area) else 10.0
    return diameter_um / mpp


def cells_anndata(
    profiles: np.ndarray,
    genes: Sequence[str],
    cells: pd.DataFrame,
    *,
    sample_id: str,
    space: str,
    trained_level: str,
    model: Mapping[str, Any] | None = None,
    phenotype: np.ndarray | None = None,
    slide: VisiumImages | Slide | str | os.PathLike[str] | None = None,
    mpp: float | None = None,
) -> ad.AnnData:
    """Build the ``cells.h5ad`` AnnData of one slide.

    Parameters
    ----------
    profiles
        (cells, genes) pseudo-cell profiles in ``space`` (eq. 10).
    genes
        Gene names, one per column.
    cells
        The profiled rows of the sample's ``cells.parquet``, in the order of ``profiles``: ``x_px``,
        ``y_px`` (centroid, level-0 pixels) and optionally ``cell_id``, ``unit_id``, ``class``,
        ``area_um2`` (copied to ``obs``).
    sample_id, space, trained_level, model
        As for :func:`bitro.predict.spots.spots_anndata`.
    phenotype
        Each cell's phenotype cluster, written to ``obs["phenotype"]`` when given.
    slide, mpp
        The H&E (a slide, its path, or images already read) and µm per level-0 pixel: when both are
        given, ``uns["spatial"][sample_id]`` is written as for spots.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 (cells × genes), ``obs``, ``obsm["spatial"]``, ``uns["bitro"]`` (``unit`` is
        ``"cell"``) and, with a slide, ``uns["spatial"]``.
    """
    if not {"x_px", "y_px"} <= set(cells):
        raise ValueError("cell table lacks columns x_px, y_px")
    x = amounts(profiles, len(cells), "pseudo-cell profiles")
    names = gene_names(genes, x.shape[1])
    obs = pd.DataFrame({c: cells[c].to_numpy() for c in OBS_COLUMNS if c in cells})
    if "class" in obs:
        obs["class"] = obs["class"].astype(object).where(obs["class"].notna(), "").astype(str)
    if "cell_id" in obs:
        obs["cell_id"] = obs["cell_id"].astype(str)
        obs.index = pd.Index(obs["cell_id"].to_numpy())
    else:
        obs.index = pd.Index(np.arange(len(cells)).astype(str))
    if phenotype is not None:
        obs["phenotype"] = np.asarray(phenotype, dtype=np.int64)
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(names)))
    adata.obsm["spatial"] = cells[["x_px", "y_px"]].to_numpy(np.float64)
    if slide is not None and mpp is not None:
        images = slide if isinstance(slide, VisiumImages) else visium_images(slide)
        diameter = cell_diameter_px(cells, mpp)
        adata.uns["spatial"] = {str(sample_id): spatial_uns(images, spot_diameter_px=diameter)}
    adata.uns["bitro"] = bitro_uns(
        sample_id=sample_id, space=space, trained_level=trained_level, unit="cell", model=model
    )
    return adata


def write_cells(
    path: str | os.PathLike[str],
    profiles: np.ndarray,
    genes: Sequence[str],
    cells: pd.DataFrame,
    *,
    sample_id: str,
    space: str,
    trained_level: str,
    model: Mapping[str, Any] | None = None,
    phenotype: np.ndarray | None = None,
    slide: VisiumImages | Slide | str | os.PathLike[str] | None = None,
    mpp: float | None = None,
) -> ad.AnnData:
    """Write ``cells.h5ad`` atomically and return it; the arguments are those of :func:`cells_anndata`."""
    adata = cells_anndata(
        profiles,
        genes,
        cells,
        sample_id=sample_id,
        space=space,
        trained_level=trained_level,
        model=model,
        phenotype=phenotype,
        slide=slide,
        mpp=mpp,
    )
    write_h5ad(adata, path)
    return adata
