"""Xenium Onboard Analysis bundles with a registered H&E image."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely

from bitro.errors import InputError
from bitro.io.cells import CELL_COLUMNS
from bitro.io.sample import Sample
from bitro.io.slides import open_slide
from bitro.io.validate import (
    check_counts,
    check_inside_image,
    check_integer_counts,
    check_not_all_zero,
    check_not_empty,
    check_subset,
    check_unique,
    positive_number,
    read_json,
    require_dir,
    require_file,
)
from bitro.layout import (
    XENIUM_ALIGNMENT,
    XENIUM_ALIGNMENT_PATTERN,
    XENIUM_CELL_BOUNDARIES,
    XENIUM_CELLS,
    XENIUM_EXPERIMENT,
    XENIUM_HE_IMAGE,
    XENIUM_HE_IMAGE_PATTERN,
    XENIUM_MATRIX,
    bundle_file,
)

GENE_FEATURE_TYPE = "Gene Expression"


# --------------------------------------------------------------------------------------------------
# 10x HDF5
# --------------------------------------------------------------------------------------------------


def _strings(dataset: Any) -> list[str]:
    """Return an HDF5 string dataset as Python strings."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in dataset[()]]


def read_10x_h5(path: str | Path) -> tuple[sp.csr_matrix, list[str], pd.DataFrame]:
    """Read a 10x Genomics feature-barcode HDF5 matrix.

    Parameters
    ----------
    path
        ``cell_feature_matrix.h5`` (``matrix/{barcodes,data,indices,indptr,shape,features/…}``).

    Returns
    -------
    tuple
        ``(X, barcodes, features)``: ``X`` barcodes × features CSR counts, barcode strings, and a
        DataFrame with ``id``, ``name``, ``feature_type`` (one row per feature, in file order).

    Raises
    ------
    InputError
        The file is not a 10x HDF5 matrix.
    """
    path = require_file(path, "10x feature-barcode matrix (.h5)")
    try:
        with h5py.File(path, "r") as handle:
            group = handle["matrix"]
            n_features, n_barcodes = (int(v) for v in group["shape"][()])
            data = group["data"][()]
            indices = group["indices"][()]
            indptr = group["indptr"][()]
            barcodes = _strings(group["barcodes"])
            feats = group["features"]
            features = pd.DataFrame(
                {
                    "id": _strings(feats["id"]),
                    "name": _strings(feats["name"]),
                    "feature_type": _strings(feats["feature_type"]),
                }
            )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(path, f"is not a readable 10x HDF5 matrix ({exc})") from exc
    if len(barcodes) != n_barcodes or len(features) != n_features or len(indptr) != n_barcodes + 1:
        raise InputError(path, "matrix shape does not match its barcodes, features or indptr")
    try:
        by_cell = sp.csc_matrix((data, indices, indptr), shape=(n_features, n_barcodes))
    except ValueError as exc:
        raise InputError(path, f"inconsistent sparse matrix ({exc})") from exc
    return by_cell.T.tocsr(), barcodes, features


# --------------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------------


def read_alignment(path: str | Path) -> np.ndarray:
    """Read ``he_imagealignment.csv``: the 3×3 affine H&E pixel (x, y, 1) → morphology pixel.

    Returns
    -------
    numpy.ndarray
        The (3, 3) float64 matrix.

    Raises
    ------
    InputError
        The file does not hold an invertible finite 3×3 matrix.
    """
    path = require_file(path, "H&E alignment matrix (he_imagealignment.csv)")
    try:
        matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(path, f"is not a comma-separated 3×3 matrix ({exc})") from exc
    if matrix.shape != (3, 3):
        raise InputError(path, f"expected a 3×3 matrix, found shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(path, "matrix contains NaN or infinite values")
    if abs(np.linalg.det(matrix)) < 1e-12:
        raise InputError(path, "matrix is not invertible")
    return matrix


def um_to_he_px(xy_um: np.ndarray, alignment: np.ndarray, pixel_size: float) -> np.ndarray:
    """Map Xenium µm to H&E level-0 pixels.

    Parameters
    ----------
    xy_um
        (n, 2) Xenium coordinates in µm.
    alignment
        3×3 matrix H&E px (x, y, 1) → morphology px.
    pixel_size
        µm per morphology pixel (``experiment.xenium`` ``pixel_size``).

    Returns
    -------
    numpy.ndarray
        (n, 2) float64 H&E level-0 (x, y) pixels: ``inv(alignment) @ (xy_um / pixel_size, 1)``.
    """
    xy_um = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    morph = np.column_stack([xy_um / pixel_size, np.ones(len(xy_um))])
    he = morph @ np.linalg.inv(alignment).T
    return he[:, :2] / he[:, 2:3]


def alignment_mpp(alignment: np.ndarray, pixel_size: float) -> float:
    """Return the H&E µm/px implied by the alignment (morphology µm/px × linear scale)."""
    return float(pixel_size * np.sqrt(abs(np.linalg.det(alignment[:2, :2]))))


# --------------------------------------------------------------------------------------------------
# bundle files
# --------------------------------------------------------------------------------------------------


def _find(root: Path, name: str, pattern: str, what: str) -> Path:
    """Return ``root/name``, or the single file matching ``pattern`` (e.g. a prefixed export)."""
    return require_file(bundle_file(root, name, pattern), what)


def _cell_ids(values: pd.Series) -> pd.Series:
    """Return cell ids as strings (bytes decoded)."""
    return values.map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v))


def _read_cells_table(path: Path) -> pd.DataFrame:
    """Read ``cells.parquet`` indexed by string ``cell_id``."""
    try:
        cells = pd.read_parquet(path)
    except Exception as exc:
        raise InputError(path, f"is not a readable Parquet table ({exc})") from exc
    missing = {"cell_id", "x_centroid", "y_centroid"} - set(cells.columns)
    if missing:
        raise InputError(path, f"missing column(s) {sorted(missing)}")
    cells["cell_id"] = _cell_ids(cells["cell_id"])
    check_unique(cells["cell_id"], path, "cell_id values")
    xy = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise InputError(path, "x_centroid/y_centroid contain NaN or infinite values")
    return cells.set_index("cell_id", drop=False)


def _read_boundaries(path: Path, cell_ids: pd.Index, alignment: np.ndarray, pixel_size: float) -> np.ndarray:
    """Return one shapely polygon (H&E px) per id in ``cell_ids`` (``None`` where none is recorded)."""
    try:
        table = pd.read_parquet(path, columns=["cell_id", "vertex_x", "vertex_y"])
    except Exception as exc:
        raise InputError(path, f"is not a readable cell boundary table ({exc})") from exc
    table["cell_id"] = _cell_ids(table["cell_id"])
    xy = table[["vertex_x", "vertex_y"]].to_numpy(dtype=np.float64)
    if not np.isfinite(xy).all():
        raise InputError(path, "vertex_x/vertex_y contain NaN or infinite values")
    codes, uniques = pd.factorize(table["cell_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    codes, he = codes[order], um_to_he_px(xy[order], alignment, pixel_size)
    counts = np.bincount(codes, minlength=len(uniques))
    if (counts < 3).any():
        bad = uniques[np.flatnonzero(counts < 3)[0]]
        raise InputError(path, f"cell {bad} has fewer than 3 boundary vertices")
    rings = shapely.linearrings(he, indices=codes)
    polygons = pd.Series(shapely.polygons(rings), index=uniques)
    return polygons.reindex(cell_ids).to_numpy(dtype=object)


def _gene_matrix(path: Path) -> tuple[sp.csr_matrix, list[str], pd.DataFrame]:
    """Read the 10x matrix and keep only ``Gene Expression`` features with unique names."""
    counts, barcodes, features = read_10x_h5(path)
    keep = (features["feature_type"] == GENE_FEATURE_TYPE).to_numpy()
    genes = features[keep].reset_index(drop=True)
    check_unique(genes["name"], path, "feature names (Gene Expression rows)")
    counts = counts[:, np.flatnonzero(keep)].tocsr()
    check_not_empty(len(barcodes), path, "cells")
    check_counts(counts, path, "counts")
    check_integer_counts(
        counts, path, "counts", way_out="give the cell_feature_matrix.h5 Xenium Onboard Analysis wrote"
    )
    check_not_all_zero(counts, path, "counts")
    return counts, barcodes, genes


def _section_mpp(
    slide_path: Path, override: float | None, fallback: float
) -> tuple[float, str, tuple[int, int]]:
    """Open the H&E image and return its µm/px, the source of that value, and level-0 dimensions."""
    with open_slide(
        slide_path, mpp=override, fallback_mpp=fallback, fallback_source="he_imagealignment.csv"
    ) as slide:
        return slide.mpp, slide.mpp_source, slide.dimensions


def read_xenium_section(
    root: str | Path,
    *,
    sample_id: str | None = None,
    mpp: float | None = None,
) -> Sample:
    """Read a Xenium section with its registered H&E image.

    Parameters
    ----------
    root
        Xenium output bundle: ``experiment.xenium``, ``cells.parquet``, ``cell_feature_matrix.h5``,
        ``he_image.ome.tif``, ``he_imagealignment.csv``, optionally ``cell_boundaries.parquet``.
    sample_id
        Section name; the bundle directory's name by default.
    mpp
        µm per H&E level-0 pixel; overrides the image's own. Without either, the value implied by the
        alignment (``pixel_size`` × its linear scale) is used.

    Returns
    -------
    Sample
        ``kind="xenium"``; ``expression`` cells × genes counts (control probes dropped; obs in matrix
        order, indexed by ``cell_id``, with the ``cells.parquet`` columns plus ``x_um``/``y_um``
        (Xenium µm); ``obsm["spatial"]`` (x, y) H&E level-0 px through the inverse alignment;
        ``var["gene_ids"]``); ``cells`` one row per cell with ``cell_id, x_px, y_px, x_um, y_um``
        (H&E px × ``mpp``, as for other kinds), ``area_um2`` (``cell_area``), ``class`` (``None``),
        ``source`` (``"xenium"``), ``geometry`` (H&E px polygon from ``cell_boundaries.parquet``, or
        ``None``), ``x_xenium_um``, ``y_xenium_um``; ``metadata`` the ``experiment.xenium`` JSON plus
        ``alignment``, ``alignment_mpp`` and ``mpp_source``.

    Raises
    ------
    MissingInputError, InputError
        A file is missing or invalid (duplicated feature names, bad counts, matrix cells missing from
        ``cells.parquet``, cells outside the H&E image, no ``pixel_size``).
    """
    root = require_dir(root, "Xenium output directory")
    sample_id = sample_id or root.resolve().name
    experiment_path = root / XENIUM_EXPERIMENT
    experiment = read_json(experiment_path, "Xenium experiment file (experiment.xenium)")
    pixel_size = positive_number(experiment.get("pixel_size"))
    if pixel_size is None:
        raise InputError(experiment_path, "pixel_size (µm per morphology pixel) is missing or not positive")
    cells_path = require_file(root / XENIUM_CELLS, "Xenium cell table (cells.parquet)")
    matrix_path = require_file(root / XENIUM_MATRIX, "Xenium cell feature matrix")
    slide_path = _find(
        root, XENIUM_HE_IMAGE, XENIUM_HE_IMAGE_PATTERN, "registered H&E image (he_image.ome.tif)"
    )
    alignment = read_alignment(_find(root, XENIUM_ALIGNMENT, XENIUM_ALIGNMENT_PATTERN, "H&E alignment"))

    implied = alignment_mpp(alignment, pixel_size)
    he_mpp, mpp_source, dims = _section_mpp(slide_path, mpp, implied)
    if mpp is None and abs(he_mpp - implied) > 0.05 * implied:
        warnings.warn(
            f"{slide_path}: image pixel size {he_mpp:.4g} µm differs from {implied:.4g} µm implied by the "
            "alignment; using the image's",
            UserWarning,
            stacklevel=2,
        )

    counts, barcodes, genes = _gene_matrix(matrix_path)
    check_unique(barcodes, matrix_path, "cell barcodes")
    table = _read_cells_table(cells_path)
    check_subset(barcodes, table.index, matrix_path, f"matrix cell ids missing from {cells_path.name}")
    table = table.loc[barcodes]

    xy_um = table[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    xy_px = um_to_he_px(xy_um, alignment, pixel_size)
    check_inside_image(xy_px, dims, cells_path, slide_path, list(barcodes), "cells")

    obs = table.drop(columns=["cell_id"]).copy()
    obs.index = pd.Index(barcodes, name="cell_id")
    obs["x_um"], obs["y_um"] = xy_um[:, 0], xy_um[:, 1]
    var = pd.DataFrame({"gene_ids": genes["id"].to_numpy()}, index=pd.Index(genes["name"].to_numpy()))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.obsm["spatial"] = xy_px

    boundaries_path = root / XENIUM_CELL_BOUNDARIES
    geometry = (
        _read_boundaries(boundaries_path, pd.Index(barcodes), alignment, pixel_size)
        if boundaries_path.is_file()
        else np.full(len(barcodes), None, dtype=object)
    )
    area = (
        table["cell_area"].to_numpy(dtype=np.float64) if "cell_area" in table else np.full(len(table), np.nan)
    )
    cells = pd.DataFrame(
        {
            "cell_id": list(barcodes),
            "x_px": xy_px[:, 0],
            "y_px": xy_px[:, 1],
            "x_um": xy_px[:, 0] * he_mpp,
            "y_um": xy_px[:, 1] * he_mpp,
            "area_um2": area,
            "class": np.full(len(barcodes), None, dtype=object),
            "source": "xenium",
            "geometry": geometry,
        },
        columns=CELL_COLUMNS,
    )
    cells["x_xenium_um"], cells["y_xenium_um"] = xy_um[:, 0], xy_um[:, 1]

    return Sample(
        sample_id=sample_id,
        kind="xenium",
        slide_path=slide_path,
        mpp=he_mpp,
        expression=adata,
        patient_id=sample_id,
        cells=cells,
        metadata={
            **experiment,
            "alignment": alignment.tolist(),
            "alignment_mpp": implied,
            "mpp_source": mpp_source,
            "cells_path": str(cells_path),
        },
    )
