"""HEST-1k samples: ``st/{id}.h5ad``, ``wsis/{id}.tif``, ``metadata/{id}.json``, ``cellvit_seg/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from bitro.errors import InputError, MissingInputError
from bitro.io.sample import Sample
from bitro.io.slides import open_slide
from bitro.io.validate import (
    check_counts,
    check_inside_image,
    check_integer_counts,
    check_not_all_zero,
    check_not_empty,
    check_spatial,
    check_unique,
    positive_number,
    read_json,
    require_dir,
    require_file,
)
from bitro.layout import hest_expression, hest_metadata, hest_segmentations, hest_slide

CellsChoice = Literal["auto", "parquet", "geojson", "none"]


def _slide_path(root: Path, sample_id: str) -> Path:
    """Return ``wsis/{id}.tif`` (or another slide suffix when that is what is there,
    :func:`bitro.layout.hest_slide`)."""
    path = hest_slide(root, sample_id)
    if not path.is_file():
        raise MissingInputError(path, "HEST whole-slide image")
    return path


def _cells_path(root: Path, sample_id: str, cells: CellsChoice) -> Path | None:
    """Return the segmentation file to read for ``cells``, or ``None`` when there is none to read."""
    if cells not in ("auto", "parquet", "geojson", "none"):
        raise ValueError(f"cells must be 'auto', 'parquet', 'geojson' or 'none', got {cells!r}")
    parquet, *geojsons = hest_segmentations(root, sample_id)
    if cells == "none":
        return None
    if cells in ("auto", "parquet") and parquet.is_file():
        return parquet
    if cells == "parquet":
        raise MissingInputError(parquet, "CellViT GeoParquet segmentation")
    for candidate in geojsons:
        if candidate.is_file():
            return candidate
    if cells == "geojson":
        raise MissingInputError(geojsons[0], "CellViT GeoJSON segmentation")
    return None


def _metadata_mpp(metadata: dict[str, Any]) -> tuple[float | None, str]:
    """Return the HEST pixel size (estimated, then embedded) and the key it came from."""
    for key in ("pixel_size_um_estimated", "pixel_size_um_embedded"):
        value = positive_number(metadata.get(key))
        if value is not None:
            return value, f"metadata {key}"
    return None, ""


def _read_expression(path: Path) -> ad.AnnData:
    """Read and check the spots × genes AnnData (unique genes, clean counts, ``obsm["spatial"]``)."""
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:
        raise InputError(path, f"is not a readable AnnData .h5ad file ({exc})") from exc
    check_not_empty(adata.n_obs, path, "spots")
    check_unique(adata.var_names, path, "gene names (var_names)")
    check_unique(adata.obs_names, path, "spot barcodes (obs_names)")
    check_counts(adata.X, path, "counts")
    check_integer_counts(adata.X, path, "X (spot counts)", way_out=_counts_way_out(adata))
    check_not_all_zero(adata.X, path, "counts")
    adata.obsm["spatial"] = check_spatial(adata.obsm, adata.n_obs, path)
    if "in_tissue" in adata.obs:
        raw = adata.obs["in_tissue"]
        if pd.api.types.is_bool_dtype(raw):
            flags = raw.astype(int)
        else:  # ints, or categories / strings of them
            flags = pd.to_numeric(raw.astype(str), errors="coerce")
        if flags.isna().any() or not flags.isin([0, 1]).all():
            raise InputError(path, 'obs["in_tissue"] must be 0 or 1 for every spot')
        if not flags.any():
            raise InputError(
                path,
                f'obs["in_tissue"] is 0 for all {adata.n_obs} spots: no spot is in tissue, nothing to train '
                "on or score (spots outside tissue are left out)",
            )
    return adata


def _counts_way_out(adata: ad.AnnData) -> str:
    """Where the raw counts of an AnnData with normalised ``X`` may be."""
    places = [f'layers["{name}"]' for name in adata.layers]
    if adata.raw is not None:
        places.append(".raw.X")
    if places:
        return f"this file also holds {', '.join(places)}: write the raw counts into X"
    return "write the raw counts (HEST-1k's st/*.h5ad as downloaded) into X"


def _patient(metadata: dict[str, Any], sample_id: str) -> str:
    """Return metadata ``patient`` when it is set, else ``sample_id``."""
    patient = metadata.get("patient")
    if patient is None or (isinstance(patient, float) and np.isnan(patient)) or str(patient).strip() == "":
        return sample_id
    return str(patient)


def read_hest_sample(
    root: str | Path,
    sample_id: str,
    *,
    mpp: float | None = None,
    cells: CellsChoice = "auto",
) -> Sample:
    """Read one HEST-1k sample.

    Parameters
    ----------
    root
        HEST directory holding ``st/``, ``wsis/``, ``metadata/`` and optionally ``cellvit_seg/``.
    sample_id
        HEST sample id (file stem).
    mpp
        µm per level-0 pixel; overrides everything. Otherwise ``pixel_size_um_estimated``, then
        ``pixel_size_um_embedded`` from the metadata, then the slide's own pixel size.
    cells
        ``"auto"`` (GeoParquet if present, else GeoJSON, else none), ``"parquet"``, ``"geojson"``
        (``.geojson`` or ``.geojson.zip``) or ``"none"``.

    Returns
    -------
    Sample
        ``kind="st"``; ``expression`` spots × genes counts with ``obsm["spatial"]`` (x, y) level-0 px;
        ``spot_diameter_um`` from metadata ``spot_diameter``; ``patient_id`` from metadata ``patient``
        (else ``sample_id``); ``metadata`` the JSON dict; ``cells`` the CellViT
        cells (``cells_frame``, source ``"cellvit"``) or ``None``.

    Raises
    ------
    MissingInputError, InputError
        A required file is missing or invalid (duplicated genes, bad counts, missing or out-of-image
        spots, no pixel size).
    """
    root = require_dir(root, "HEST directory")
    h5ad_path = require_file(hest_expression(root, sample_id), "HEST spot expression (.h5ad)")
    meta_path = hest_metadata(root, sample_id)
    metadata = read_json(meta_path, "HEST metadata JSON")
    slide_path = _slide_path(root, sample_id)
    cells_path = _cells_path(root, sample_id, cells)

    meta_mpp, meta_source = _metadata_mpp(metadata)
    chosen, source = (mpp, "override") if mpp is not None else (meta_mpp, meta_source)
    with open_slide(slide_path, mpp=chosen, mpp_source=source or "override") as slide:
        pixel_size, dims = slide.mpp, slide.dimensions

    adata = _read_expression(h5ad_path)
    check_inside_image(adata.obsm["spatial"], dims, h5ad_path, slide_path, list(adata.obs_names), "spots")

    cell_table: pd.DataFrame | None = None
    if cells_path is not None:
        # geopandas (bitro.io.cells) only for a sample that has a segmentation to read.
        from bitro.io.cells import cells_frame, read_cell_segmentation

        cell_table = cells_frame(read_cell_segmentation(cells_path), mpp=pixel_size, source="cellvit")

    return Sample(
        sample_id=sample_id,
        kind="st",
        slide_path=slide_path,
        mpp=pixel_size,
        expression=adata,
        patient_id=_patient(metadata, sample_id),
        spot_diameter_um=positive_number(metadata.get("spot_diameter")),
        cells=cell_table,
        metadata=metadata
        | {"metadata_path": str(meta_path)}
        | ({"cells_path": str(cells_path)} if cells_path is not None else {}),
    )
