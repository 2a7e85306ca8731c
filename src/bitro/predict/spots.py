"""``spots.h5ad``: one slide's predicted units × genes, laid out as scanpy and squidpy read Visium.

scanpy's ``read_visium`` convention (https://scanpy.readthedocs.io/en/stable/generated/scanpy.read_visium.html),
which ``scanpy.pl.spatial`` and ``squidpy.pl.spatial_scatter`` read back:

- ``obsm["spatial"]``: (x, y) of each spot centre in full-resolution (level-0) slide pixels;
- ``uns["spatial"][library_id]["images"]``: ``"hires"`` and ``"lowres"`` RGB images of the slide;
- ``uns["spatial"][library_id]["scalefactors"]``: ``tissue_hires_scalef`` and ``tissue_lowres_scalef``
  (image pixels per full-resolution pixel) and ``spot_diameter_fullres`` (spot diameter, full-resolution
  pixels), which scanpy uses as the size of the circles it draws.

With one library in ``uns["spatial"]``, ``scanpy.pl.spatial(adata, color=gene)`` draws the spots over the
``hires`` image with no further argument.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.io.slides import Slide
from bitro.io.thumbnails import VisiumImages, visium_images
from bitro.predict._record import amounts, bitro_uns, gene_names

#: Columns of a units table (``units.parquet``) a spots file needs.
UNIT_COLUMNS = ("x_px", "y_px", "diameter_um")
#: Columns of the units table copied into ``obs`` where present.
OBS_COLUMNS = ("unit_id", "barcode", "in_tissue", "shape", "tissue_fraction")


def spatial_uns(images: VisiumImages, *, spot_diameter_px: float) -> dict[str, Any]:
    """The value of ``uns["spatial"][library_id]``: images, scale factors and metadata."""
    if not np.isfinite(spot_diameter_px) or spot_diameter_px <= 0:
        raise ValueError(f"spot diameter must be a positive number of pixels, got {spot_diameter_px}")
    entry: dict[str, Any] = {
        "images": {"hires": images.hires.pixels, "lowres": images.lowres.pixels},
        "scalefactors": {
            "tissue_hires_scalef": float(images.hires.scale),
            "tissue_lowres_scalef": float(images.lowres.scale),
            "spot_diameter_fullres": float(spot_diameter_px),
        },
        "metadata": {},
    }
    if images.source is not None:
        entry["metadata"]["source_image_path"] = images.source
    return entry


def spots_anndata(
    prediction: np.ndarray,
    genes: Sequence[str],
    units: pd.DataFrame,
    *,
    sample_id: str,
    slide: VisiumImages | Slide | str | os.PathLike[str],
    mpp: float,
    space: str,
    trained_level: str,
    model: Mapping[str, Any] | None = None,
    n_cells: np.ndarray | None = None,
) -> ad.AnnData:
    """Build the ``spots.h5ad`` AnnData of one slide (see the module docstring for the layout).

    Parameters
    ----------
    prediction
        (units, genes) predicted amounts in ``space``; NaN rows are units the model could not predict
        (no cells).
    genes
        Gene names, one per column.
    units
        The predicted rows of the sample's ``units.parquet``, in the order of ``prediction``: ``x_px``,
        ``y_px`` (level-0 pixels), ``diameter_um`` (spot diameter or patch side), and optionally
        ``unit_id``, ``barcode``, ``in_tissue``, ``shape``, ``tissue_fraction`` (copied to ``obs``).
    sample_id
        The library id under ``uns["spatial"]``.
    slide
        The H&E: a slide (or its path), read into ``hires`` and ``lowres`` images, or images already read.
    mpp
        µm per level-0 pixel, to turn ``diameter_um`` into ``spot_diameter_fullres``.
    space
        ``"counts"`` or ``"tpm"``: what ``X`` holds, recorded in ``uns["bitro"]["space"]``.
    trained_level
        ``"spot"`` or ``"bulk"``: the level of the model's training targets (a bulk model's patch maps are
        its deconvolution, not a measured level), recorded in ``uns["bitro"]["trained_level"]``.
    model
        Free-form description of the model or bundle (name, path, version, cohort…), recorded in
        ``uns["bitro"]["model"]``; strings, numbers, lists and dicts only.
    n_cells
        Cells per unit, written to ``obs["n_cells"]`` when given.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 (units × genes), ``obs`` from ``units``, ``obsm["spatial"]``, ``uns["spatial"]`` and
        ``uns["bitro"]`` (``sample_id``, ``space``, ``trained_level``, ``unit``, ``model``).
    """
    missing = [c for c in UNIT_COLUMNS if c not in units]
    if missing:
        raise ValueError(f"units table lacks columns {missing}")
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp}")
    x = amounts(prediction, len(units), "prediction")
    names = gene_names(genes, x.shape[1])
    images = slide if isinstance(slide, VisiumImages) else visium_images(slide)
    obs = pd.DataFrame({c: units[c].to_numpy() for c in OBS_COLUMNS if c in units})
    if "shape" in obs:
        obs["shape"] = obs["shape"].astype(str)
    if n_cells is not None:
        obs["n_cells"] = np.asarray(n_cells, dtype=np.int64)
    if "barcode" in obs and (obs["barcode"].astype(str) != "").all():
        index = obs["barcode"].astype(str).to_numpy()
    elif "unit_id" in obs:
        index = obs["unit_id"].astype(str).to_numpy()
    else:
        index = np.arange(len(units)).astype(str)
    obs.index = pd.Index(index)
    diameters = units["diameter_um"].to_numpy(np.float64)
    diameter_px = float(np.median(diameters)) / mpp if len(diameters) else float("nan")
    shapes = set(obs["shape"]) if "shape" in obs else {"circle"}
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(names)))
    adata.obsm["spatial"] = units[["x_px", "y_px"]].to_numpy(np.float64)
    adata.uns["spatial"] = {str(sample_id): spatial_uns(images, spot_diameter_px=diameter_px)}
    adata.uns["bitro"] = bitro_uns(
        sample_id=sample_id,
        space=space,
        trained_level=trained_level,
        unit="spot" if shapes == {"circle"} else "patch",
        model=model,
    )
    return adata


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike[str]) -> Path:
    """Write ``adata`` to ``path`` atomically (a failed write leaves no file behind)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def write_spots(
    path: str | os.PathLike[str],
    prediction: np.ndarray,
    genes: Sequence[str],
    units: pd.DataFrame,
    *,
    sample_id: str,
    slide: VisiumImages | Slide | str | os.PathLike[str],
    mpp: float,
    space: str,
    trained_level: str,
    model: Mapping[str, Any] | None = None,
    n_cells: np.ndarray | None = None,
) -> ad.AnnData:
    """Write ``spots.h5ad`` atomically and return it; the arguments are those of :func:`spots_anndata`."""
    adata = spots_anndata(
        prediction,
        genes,
        units,
        sample_id=sample_id,
        slide=slide,
        mpp=mpp,
        space=space,
        trained_level=trained_level,
        model=model,
        n_cells=n_cells,
    )
    write_h5ad(adata, path)
    return adata
