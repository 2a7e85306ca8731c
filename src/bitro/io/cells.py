"""Cell segmentations: HEST CellViT GeoParquet and GeoJSON in, QuPath GeoJSON out."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import mapping, shape

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

CELLVIT_COLORS: dict[str, tuple[int, int, int]] = {
    "Neoplastic": (255, 0, 0),
    "Inflammatory": (34, 221, 77),
    "Connective": (35, 92, 236),
    "Dead": (254, 255, 0),
    "Epithelial": (255, 159, 68),
}

CELL_COLUMNS = ["cell_id", "x_px", "y_px", "x_um", "y_um", "area_um2", "class", "source", "geometry"]


def _class_name(properties: dict[str, Any]) -> str | None:
    """Return the cell class from GeoJSON ``properties`` (QuPath ``classification`` or ``class``)."""
    classification = properties.get("classification")
    if isinstance(classification, str):
        try:
            classification = json.loads(classification)
        except json.JSONDecodeError:
            return classification or None
    if isinstance(classification, dict) and classification.get("name") is not None:
        return str(classification["name"])
    for key in ("class", "classification_name", "type"):
        value = properties.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _load_geojson(path: Path) -> dict[str, Any] | list[Any]:
    """Return the parsed JSON of a ``.geojson``/``.json`` file or of the GeoJSON inside a ``.zip``."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n.lower().endswith((".geojson", ".json"))]
                if not members:
                    raise InputError(path, "zip archive holds no .geojson file")
                return json.loads(archive.read(members[0]).decode("utf-8"))
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"is not readable GeoJSON ({exc})") from exc


def _features(data: dict[str, Any] | list[Any], path: Path) -> list[dict[str, Any]]:
    """Return the features of a FeatureCollection, a bare feature list, or a single feature."""
    if isinstance(data, list):
        return data
    if data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if data.get("type") == "Feature":
        return [data]
    raise InputError(path, "expected a GeoJSON FeatureCollection or a list of features")


def _read_geojson(path: Path) -> gpd.GeoDataFrame:
    """Read cells from GeoJSON with one Feature per cell or one MultiPolygon Feature per class."""
    ids: list[Any] = []
    classes: list[str | None] = []
    geoms: list[Any] = []
    for number, feature in enumerate(_features(_load_geojson(path), path)):
        if not isinstance(feature, dict) or feature.get("geometry") is None:
            continue
        try:
            geom = shape(feature["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(path, f"feature {number} has an invalid geometry ({exc})") from exc
        if geom.geom_type not in {"Polygon", "MultiPolygon"}:
            raise InputError(path, f"feature {number} is a {geom.geom_type}; cell outlines must be polygons")
        props = feature.get("properties") or {}
        cls = _class_name(props)
        parts = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
        cell_id = props.get("cell_id", feature.get("id")) if len(parts) == 1 else None
        for part in parts:
            ids.append(cell_id)
            classes.append(cls)
            geoms.append(part)
    if not geoms:
        raise InputError(path, "holds no cell polygons")
    return _frame(ids, classes, geoms)


def _frame(ids: list[Any], classes: list[str | None], geoms: list[Any]) -> gpd.GeoDataFrame:
    """Return the standard GeoDataFrame; ids are kept when every cell has a distinct one."""
    id_series = pd.Series(ids, dtype=object)
    if id_series.isna().any() or id_series.duplicated().any():
        id_series = pd.Series(np.arange(len(geoms), dtype=np.int64))
    else:
        numeric = pd.to_numeric(id_series, errors="coerce")
        if not numeric.isna().any() and (numeric == numeric.round()).all():
            id_series = numeric.astype(np.int64)
    return gpd.GeoDataFrame(
        {"cell_id": id_series.to_numpy(), "class": pd.Series(classes, dtype=object).to_numpy()},
        geometry=gpd.GeoSeries(geoms),
    )


def _read_parquet(path: Path) -> gpd.GeoDataFrame:
    """Read a GeoParquet written by geopandas (HEST ``*_cellvit_seg.parquet``)."""
    try:
        gdf = gpd.read_parquet(path)
    except Exception as exc:
        raise InputError(path, f"is not readable GeoParquet ({exc})") from exc
    geom_types = set(gdf.geometry.geom_type.dropna().unique())
    if not geom_types <= {"Polygon", "MultiPolygon"}:
        raise InputError(path, f"cell outlines must be polygons, found {sorted(geom_types)}")
    ids = gdf["cell_id"].tolist() if "cell_id" in gdf.columns else [None] * len(gdf)
    if "class" in gdf.columns:
        classes = [None if pd.isna(c) else str(c) for c in gdf["class"]]
    else:
        classes = [None] * len(gdf)
    return _frame(ids, classes, list(gdf.geometry.to_numpy()))


def read_cell_segmentation(path: str | Path) -> gpd.GeoDataFrame:
    """Read a cell segmentation (GeoParquet, GeoJSON or zipped GeoJSON).

    Parameters
    ----------
    path
        ``*.parquet`` (GeoParquet with ``geometry``, optional ``class`` and ``cell_id``), ``*.geojson`` /
        ``*.json`` or ``*.geojson.zip``. GeoJSON may hold one Feature per cell (class in
        ``properties.classification.name``) or, as CellViT writes it, one MultiPolygon Feature per class,
        which is exploded into one row per polygon.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per cell with ``cell_id`` (the file's ids when complete and unique, else 0..n-1),
        ``class`` (str or ``None``) and ``geometry`` (shapely Polygon, in the file's coordinates —
        level-0 pixels for HEST).

    Raises
    ------
    MissingInputError, InputError
        The file is missing, unreadable, or holds no polygons.
    """
    path = require_file(path, "cell segmentation")
    name = path.name.lower()
    if name.endswith((".parquet", ".geoparquet")):
        return _read_parquet(path)
    if name.endswith((".geojson", ".json", ".zip")):
        return _read_geojson(path)
    raise InputError(path, "unknown cell segmentation format (expected .parquet, .geojson or .geojson.zip)")


def cells_frame(gdf: gpd.GeoDataFrame, *, mpp: float, source: str) -> pd.DataFrame:
    """Turn segmented cells into the cell table a ``Sample`` carries.

    Parameters
    ----------
    gdf
        Cells as returned by ``read_cell_segmentation`` (polygons in level-0 pixels).
    mpp
        µm per level-0 pixel.
    source
        Where the cells come from (e.g. ``"cellvit"``), stored in every row.

    Returns
    -------
    pandas.DataFrame
        ``cell_id, x_px, y_px, x_um, y_um, area_um2, class, source, geometry``: centroid in pixels and
        µm (pixels × ``mpp``), polygon area in µm², and the shapely polygon.
    """
    geoms = np.asarray(gdf.geometry.to_numpy(), dtype=object)
    centroids = shapely.centroid(geoms)
    x_px = shapely.get_x(centroids).astype(np.float64)
    y_px = shapely.get_y(centroids).astype(np.float64)
    classes = gdf["class"].to_numpy(dtype=object) if "class" in gdf.columns else [None] * len(gdf)
    ids = gdf["cell_id"].to_numpy() if "cell_id" in gdf.columns else np.arange(len(gdf))
    return pd.DataFrame(
        {
            "cell_id": ids,
            "x_px": x_px,
            "y_px": y_px,
            "x_um": x_px * mpp,
            "y_um": y_px * mpp,
            "area_um2": shapely.area(geoms).astype(np.float64) * mpp * mpp,
            "class": pd.Series(classes, dtype=object).to_numpy(),
            "source": source,
            "geometry": geoms,
        },
        columns=CELL_COLUMNS,
    )


def _json_scalar(value: Any) -> Any:
    """Return ``value`` as a plain JSON scalar (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _color(name: str) -> list[int]:
    """Return an RGB colour for a class: CellViT's palette, else one derived from the name."""
    if name in CELLVIT_COLORS:
        return list(CELLVIT_COLORS[name])
    seed = sum((i + 1) * ord(ch) for i, ch in enumerate(name))
    return [(seed * 67) % 256, (seed * 151) % 256, (seed * 211) % 256]


def _feature(geom: Any, cls: Any, cell_id: Any) -> dict[str, Any]:
    """Return one QuPath detection Feature."""
    properties: dict[str, Any] = {"objectType": "detection"}
    if cls is not None and not pd.isna(cls):
        properties["classification"] = {"name": str(cls), "color": _color(str(cls))}
    if cell_id is not None:
        properties["cell_id"] = _json_scalar(cell_id)
    return {"type": "Feature", "geometry": mapping(geom), "properties": properties}


def write_cells_geojson(df: pd.DataFrame, path: str | Path) -> Path:
    """Write cells as a GeoJSON FeatureCollection that QuPath imports as detections.

    Parameters
    ----------
    df
        Cells with a ``geometry`` column of shapely polygons (level-0 pixels), and optional ``class``
        and ``cell_id`` columns (e.g. from ``cells_frame`` or ``read_cell_segmentation``).
    path
        Output file; written to a temporary file in the same directory, then renamed.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    geoms = df["geometry"].to_numpy()
    classes = df["class"].to_numpy() if "class" in df.columns else [None] * len(df)
    ids = df["cell_id"].to_numpy() if "cell_id" in df.columns else [None] * len(df)
    features = [
        _feature(geom, cls, cell_id)
        for geom, cls, cell_id in zip(geoms, classes, ids, strict=True)
        if geom is not None and not shapely.is_empty(geom)
    ]
    collection = {"type": "FeatureCollection", "features": features}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection), encoding="utf-8")
    return path
