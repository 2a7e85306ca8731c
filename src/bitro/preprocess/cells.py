"""The cell table ``cells.parquet``: segmented cells with their unit, in a fixed spatial order.

Columns (docs/formats.md): ``cell_id``, ``x_px``, ``y_px`` (centroid, level-0 px), ``x_um``, ``y_um``,
``area_um2``, ``unit_id`` (the unit whose circle or square holds the centroid, in µm; −1 for none),
``source`` (``classical``, ``cellvit``, ``hest-cellvit``, ``xenium``…), ``class`` (the segmenter's cell
type, or missing) and ``geometry`` (WKB outline in level-0 px, or null). The file is GeoParquet when
outlines are present, so geopandas and QGIS open it as it is.

Rows are sorted in bands of ``BAND_UM`` along y, then by x: cells that are close on the slide are close
in the table, so later stages that read pixels per row range (crops) read each region once. Row ``i`` of
every per-cell array downstream (crops, embeddings, features) is row ``i`` of this table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.spatial import cKDTree

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

CELLS_COLUMNS = (
    "cell_id",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "area_um2",
    "unit_id",
    "source",
    "class",
    "geometry",
)
BAND_UM = 256.0
#: A nucleus cut by the slide's edge may have its centroid this far outside (µm) and still belong to it.
EDGE_TOLERANCE_UM = 10.0


def assign_units(x_um: np.ndarray, y_um: np.ndarray, units: pd.DataFrame) -> np.ndarray:
    """The unit holding each point: inside its circle (spots) or square (patches); −1 where none does.

    Geometry is in µm with the unit's ``diameter_um`` as diameter or side. Where units overlap, the
    nearest centre wins (Euclidean for circles, Chebyshev for squares).
    """
    points = np.column_stack([np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)])
    unit_ids = np.full(len(points), -1, dtype=np.int64)
    best = np.full(len(points), np.inf)
    if not len(points) or not len(units):
        return unit_ids
    for shape, norm in (("circle", 2.0), ("square", np.inf)):
        subset = units[units["shape"].astype(str) == shape]
        if not len(subset):
            continue
        centres = subset[["x_um", "y_um"]].to_numpy(np.float64)
        half = subset["diameter_um"].to_numpy(np.float64) / 2.0
        dist, idx = cKDTree(centres).query(
            points, k=1, p=norm, distance_upper_bound=float(half.max()) * 1.0001
        )
        found = np.isfinite(dist)
        inside = np.zeros(len(points), dtype=bool)
        inside[found] = dist[found] <= half[idx[found]] * (1 + 1e-9)
        better = inside & (dist < best)
        unit_ids[better] = subset["unit_id"].to_numpy()[idx[better]]
        best[better] = dist[better]
    return unit_ids


def cells_table(
    cells: pd.DataFrame,
    *,
    mpp: float,
    units: pd.DataFrame,
    source: str,
    slide_dimensions: tuple[int, int],
    path: str | Path,
) -> pd.DataFrame:
    """Build ``cells.parquet`` rows from segmented cells.

    Parameters
    ----------
    cells
        ``x_px``, ``y_px`` (centroids, level-0 px) and optionally ``cell_id``, ``area_um2``, ``class``,
        ``geometry`` (shapely polygons or WKB bytes, level-0 px) and ``source``.
    mpp
        µm per level-0 pixel.
    units
        The sample's ``units.parquet``.
    source
        Recorded in ``source`` where ``cells`` has none.
    slide_dimensions
        The slide's level-0 (width, height), to catch a segmentation made for another slide or level.
    path
        The segmentation file, named in errors.

    Raises
    ------
    InputError
        A centroid lies outside the slide, or the table lacks coordinates.
    """
    import shapely  # here and in export_cells_geojson: reading or writing the table needs no shapely

    missing = {"x_px", "y_px"} - set(cells.columns)
    if missing:
        raise InputError(path, f"segmentation lacks columns {sorted(missing)}")
    x = cells["x_px"].to_numpy(np.float64)
    y = cells["y_px"].to_numpy(np.float64)
    width, height = slide_dimensions
    margin = EDGE_TOLERANCE_UM / mpp
    outside = (x < -margin) | (y < -margin) | (x > width + margin) | (y > height + margin)
    if not np.all(np.isfinite(x) & np.isfinite(y)):
        raise InputError(path, "segmentation has cells without a finite centroid")
    if outside.any():
        raise InputError(
            path,
            f"{int(outside.sum())} of {len(x)} cells lie outside the slide ({width}×{height} px), up to "
            f"({x.max():.0f}, {y.max():.0f}) px: was it made for another slide or pyramid level?",
        )
    n = len(cells)
    geometry = cells["geometry"].to_numpy(dtype=object) if "geometry" in cells else np.full(n, None, object)
    if n and not isinstance(next((g for g in geometry if g is not None), b""), bytes | bytearray):
        geometry = np.asarray(shapely.to_wkb(geometry), dtype=object)
    if "area_um2" in cells:
        area = cells["area_um2"].to_numpy(np.float64)
    else:
        area = shapely.area(shapely.from_wkb(geometry)) * mpp * mpp
    cell_id = cells["cell_id"].to_numpy() if "cell_id" in cells else np.arange(n, dtype=np.int64)
    table = pd.DataFrame(
        {
            "cell_id": cell_id,
            "x_px": x,
            "y_px": y,
            "x_um": x * mpp,
            "y_um": y * mpp,
            "area_um2": np.asarray(area, np.float64),
            "unit_id": assign_units(x * mpp, y * mpp, units),
            "source": cells["source"].astype(str).to_numpy() if "source" in cells else np.full(n, source),
            "class": pd.array(cells["class"] if "class" in cells else [None] * n, dtype="string"),
            "geometry": geometry,
        }
    )
    if table["cell_id"].duplicated().any():
        raise InputError(path, "segmentation has duplicated cell ids")
    order = np.lexsort((table["x_um"].to_numpy(), np.floor(table["y_um"].to_numpy() / BAND_UM)))
    return table.iloc[order].reset_index(drop=True)


def write_cells(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``cells.parquet`` atomically; GeoParquet metadata is added when outlines are present."""
    arrow = pa.Table.from_pandas(table.loc[:, list(CELLS_COLUMNS)], preserve_index=False)
    if table["geometry"].notna().any():
        geo = {
            "version": "1.0.0",
            "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}},
        }
        arrow = arrow.replace_schema_metadata(
            {**(arrow.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
        )
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_cells(path: str | Path, *, geometry: bool = True) -> pd.DataFrame:
    """Read ``cells.parquet`` (outlines stay WKB bytes); ``geometry=False`` skips the outlines."""
    path = require_file(path, "cell table")
    columns = list(CELLS_COLUMNS) if geometry else [c for c in CELLS_COLUMNS if c != "geometry"]
    try:
        table = pq.read_table(path, columns=columns).to_pandas()
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise InputError(path, f"is not a bitro cell table ({exc})") from exc
    if table.empty:
        raise InputError(path, "holds no cells: an empty sample cannot be trained on or scored")
    return table


def export_cells_geojson(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the cells with outlines as a QuPath detection GeoJSON (cells without outlines are skipped)."""
    import shapely

    from bitro.io.cells import write_cells_geojson

    with_outline = table[table["geometry"].notna()]
    frame = pd.DataFrame(
        {
            "cell_id": with_outline["cell_id"].to_numpy(),
            "class": with_outline["class"].astype(object).to_numpy(),
            "geometry": shapely.from_wkb(with_outline["geometry"].to_numpy()),
        }
    )
    return write_cells_geojson(frame, path)
