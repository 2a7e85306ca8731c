"""``cells.geojson``: each cell's outline with its predicted expression as QuPath measurements.

QuPath's GeoJSON (https://qupath.readthedocs.io/en/stable/docs/advanced/exporting_annotations.html):
a FeatureCollection whose features carry ``properties.objectType`` (here ``"cell"``) and
``properties.measurements``, a JSON object of measurement name → number, as QuPath 0.4 and later write
it and read it (older versions wrote a list of ``{"name", "value"}``). The segmenter's class goes to
``properties.classification``. A cell without an outline is written as a point at its centroid. The file
is written by :func:`bitro.io.cells.write_cells_geojson`, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from bitro.io.cells import write_cells_geojson
from bitro.predict._record import amounts, check_space, gene_names

#: Name of a gene's measurement; QuPath groups measurements by the text before ": ".
MEASUREMENT = "BiTro {space}: {gene}"


def outlines(cells: pd.DataFrame) -> np.ndarray:
    """Each cell's geometry: its outline (``geometry``, shapely or WKB) where known, else its centroid."""
    n = len(cells)
    raw = cells["geometry"].to_numpy(dtype=object) if "geometry" in cells else np.full(n, None, object)
    present = np.array([g is not None and not (isinstance(g, float) and np.isnan(g)) for g in raw], bool)
    geoms = np.full(n, None, dtype=object)
    if present.any():
        given = raw[present]
        as_wkb = isinstance(given[0], bytes | bytearray)
        geoms[present] = shapely.from_wkb(given) if as_wkb else given
    points = shapely.points(cells["x_px"].to_numpy(np.float64), cells["y_px"].to_numpy(np.float64))
    empty = np.array([g is None or shapely.is_empty(g) for g in geoms], bool)
    geoms[empty] = points[empty]
    return geoms


def measurement_table(
    profiles: np.ndarray,
    genes: Sequence[str],
    chosen: Sequence[str],
    *,
    space: str,
    name: str = MEASUREMENT,
) -> pd.DataFrame:
    """The ``chosen`` genes' columns of ``profiles``, named by ``name`` (fields ``{gene}``, ``{space}``)."""
    names = gene_names(genes, np.shape(profiles)[1])
    missing = [g for g in chosen if g not in names]
    if missing:
        raise ValueError(f"genes not among the predicted genes: {missing[:5]}")
    columns = [names.index(g) for g in chosen]
    values = np.asarray(profiles)[:, columns]
    label = {"counts": "counts", "tpm": "TPM"}[check_space(space)]
    return pd.DataFrame(values, columns=[name.format(gene=g, space=label) for g in chosen])


def write_cells_qupath(
    path: str | os.PathLike[str],
    profiles: np.ndarray,
    genes: Sequence[str],
    cells: pd.DataFrame,
    *,
    chosen: Sequence[str],
    space: str,
    name: str = MEASUREMENT,
) -> Path:
    """Write ``cells.geojson``: one QuPath cell per row of ``cells`` with the ``chosen`` genes' values.

    Parameters
    ----------
    path
        Output file, written atomically.
    profiles
        (cells, genes) pseudo-cell profiles in ``space``, rows in the order of ``cells``.
    genes
        Gene names of the columns of ``profiles``.
    cells
        The profiled rows of ``cells.parquet``: ``x_px``, ``y_px``, and optionally ``geometry`` (outline,
        WKB or shapely, level-0 px; null for none), ``cell_id``, ``class``.
    chosen
        Genes written as measurements (e.g. the model's best-predicted genes).
    space
        ``"counts"`` or ``"tpm"``, named in each measurement.
    name
        Format of a measurement's name, with ``{gene}`` and ``{space}``.

    Returns
    -------
    pathlib.Path
        ``path``. Features: ``geometry`` (Polygon, or Point without an outline), ``properties.objectType``
        ``"cell"``, ``properties.cell_id``, ``properties.classification`` (where the cell has a class) and
        ``properties.measurements`` (name → value; a NaN value is left out).
    """
    values = amounts(profiles, len(cells), "pseudo-cell profiles")
    table = measurement_table(values, genes, chosen, space=space, name=name)
    frame = pd.DataFrame({"geometry": outlines(cells)})
    if "cell_id" in cells:
        frame["cell_id"] = cells["cell_id"].to_numpy()
    if "class" in cells:
        frame["class"] = cells["class"].astype(object).to_numpy()
    return write_cells_geojson(frame, path, object_type="cell", measurements=table)
