"""Cell segmentations: HEST CellViT GeoParquet, GeoJSON and HoVer-Net JSON in, QuPath GeoJSON out."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import Polygon, mapping, shape

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

if TYPE_CHECKING:  # geopandas only to read a segmentation: writing GeoJSON (QuPath exports) needs none
    import geopandas as gpd

CELLVIT_COLORS: dict[str, tuple[int, int, int]] = {
    "Neoplastic": (255, 0, 0),
    "Inflammatory": (34, 221, 77),
    "Connective": (35, 92, 236),
    "Dead": (254, 255, 0),
    "Epithelial": (255, 159, 68),
}

PANNUKE_TYPE_NAMES: dict[int, str] = {
    1: "Neoplastic",
    2: "Inflammatory",
    3: "Connective",
    4: "Dead",
    5: "Epithelial",
}
"""PanNuke nucleus types as HoVer-Net (``type_info.json``) and CellViT number them; 0 is "no label"."""

#: Features :func:`write_cells_geojson` turns into text at a time.
GEOJSON_CHUNK = 10_000

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
        kind = "JSON" if path.suffix.lower() == ".json" else "GeoJSON"
        raise InputError(path, f"is not readable {kind} ({exc})") from exc


def _features(data: dict[str, Any] | list[Any], path: Path) -> list[dict[str, Any]]:
    """Return the features of a FeatureCollection, a bare feature list, or a single feature."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise InputError(path, f"expected a GeoJSON object or list, found {type(data).__name__}")
    if data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if data.get("type") == "Feature":
        return [data]
    hint = ', or HoVer-Net JSON with a "nuc" object' if path.suffix.lower() == ".json" else ""
    raise InputError(path, f"expected a GeoJSON FeatureCollection or a list of features{hint}")


def _read_geojson(path: Path, data: dict[str, Any] | list[Any] | None = None) -> gpd.GeoDataFrame:
    """Read cells from GeoJSON with one Feature per cell or one MultiPolygon Feature per class.

    ``data`` is the already parsed file, if the caller has it.
    """
    if data is None:
        data = _load_geojson(path)
    ids: list[Any] = []
    classes: list[str | None] = []
    geoms: list[Any] = []
    for number, feature in enumerate(_features(data, path)):
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
    return _frame(ids, classes, geoms, path)


def _frame(ids: list[Any], classes: list[str | None], geoms: list[Any], path: Path) -> gpd.GeoDataFrame:
    """Return the standard GeoDataFrame, outlines repaired (:func:`repair_outlines`).

    The file's ids are kept when every cell has one; cells without ids (CellViT's one MultiPolygon per
    class) are numbered 0..n-1.

    Raises
    ------
    InputError
        The file holds no cells, or gives one id to two cells.
    """
    import geopandas as gpd

    if not geoms:
        raise InputError(path, "holds no cells: an empty segmentation (the sample would have no cells)")
    id_series = pd.Series(ids, dtype=object)
    present = id_series[id_series.notna()]
    dupes = present[present.duplicated()].unique().tolist()
    if dupes:
        shown = ", ".join(map(str, dupes[:5])) + (f" … and {len(dupes) - 5} more" if len(dupes) > 5 else "")
        raise InputError(path, f"{len(dupes)} cell_id value(s) are given to more than one cell: {shown}")
    geoms = repair_outlines(geoms, path)
    if id_series.isna().any():
        id_series = pd.Series(np.arange(len(geoms), dtype=np.int64))
    else:
        numeric = pd.to_numeric(id_series, errors="coerce")
        if not numeric.isna().any() and (numeric == numeric.round()).all():
            id_series = numeric.astype(np.int64)
    return gpd.GeoDataFrame(
        {"cell_id": id_series.to_numpy(), "class": pd.Series(classes, dtype=object).to_numpy()},
        geometry=gpd.GeoSeries(geoms),
    )


def _flatten(geometry: Any) -> list[Any]:
    """The simple geometries in ``geometry``, multi-part and collection members taken apart recursively."""
    if hasattr(geometry, "geoms"):
        return [part for member in geometry.geoms for part in _flatten(member)]
    return [geometry]


def _contour_polygon(contour: Any, path: Path, what: str) -> Polygon:
    """Return the polygon of a ``[[x, y], ...]`` contour (HoVer-Net / CellViT), repaired if self-touching.

    Raises
    ------
    InputError
        The contour is not a list of ``[x, y]`` number pairs, has fewer than 3 distinct points, or
        encloses no area. The message names ``path`` and ``what`` (e.g. ``"nucleus 7"``).
    """
    try:
        points = np.asarray(contour, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"{what} has a malformed contour ({exc})") from exc
    if points.ndim == 1 and points.size <= 2:
        raise InputError(path, f"{what} has a contour with fewer than 3 points")
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(path, f"{what} has a contour that is not a list of [x, y] points")
    if not np.isfinite(points).all():
        raise InputError(path, f"{what} has NaN or infinite contour coordinates")
    if len(np.unique(points, axis=0)) < 3:
        raise InputError(path, f"{what} has a contour with fewer than 3 points ({len(points)} given)")
    polygon = Polygon(points)
    if not polygon.is_valid:
        # make_valid may nest: a contour that crosses itself and has a spike becomes a
        # GeometryCollection of a MultiPolygon and a LineString (seen in CellViT++ output).
        parts = [g for g in _flatten(shapely.make_valid(polygon)) if g.geom_type == "Polygon"]
        polygon = max(parts, key=lambda g: g.area) if parts else Polygon()
    if polygon.is_empty or polygon.area <= 0:
        raise InputError(path, f"{what} has a degenerate contour enclosing no area")
    return polygon


def _type_name(value: Any, names: dict[int, str], path: Path, what: str) -> str | None:
    """Return the class name of a numeric nucleus ``type``; ``None`` for a missing type or type 0.

    Raises
    ------
    InputError
        ``type`` is not an integer, or is a non-zero type that ``names`` does not list.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise InputError(path, f"{what} has a non-integer type {value!r}")
    number = int(value)
    if number in names:
        return names[number]
    if number == 0:
        return None
    raise InputError(path, f"{what} has type {number}, which is not among the type names {sorted(names)}")


def _read_hovernet(path: Path, data: dict[str, Any], type_names: dict[int, str] | None) -> gpd.GeoDataFrame:
    """Read HoVer-Net's ``{"mag": ..., "nuc": {id: {"contour": [[x, y], ...], "type": t, ...}}}``."""
    nuclei = data["nuc"]
    if not isinstance(nuclei, dict):
        raise InputError(
            path, f'"nuc" must be an object mapping nucleus ids to nuclei, found {type(nuclei).__name__}'
        )
    if not nuclei:
        raise InputError(path, 'holds no nuclei ("nuc" is empty)')
    names = dict(PANNUKE_TYPE_NAMES if type_names is None else type_names)
    ids: list[Any] = []
    classes: list[str | None] = []
    geoms: list[Any] = []
    for key, nucleus in nuclei.items():
        what = f"nucleus {key}"
        if not isinstance(nucleus, dict):
            raise InputError(path, f"{what} is not an object")
        if "contour" not in nucleus:
            raise InputError(path, f"{what} has no contour")
        geoms.append(_contour_polygon(nucleus["contour"], path, what))
        classes.append(_type_name(nucleus.get("type"), names, path, what))
        ids.append(key)
    return _frame(ids, classes, geoms, path)


def repair_outlines(geoms: list[Any], path: Path) -> list[Any]:
    """Outlines with invalid (self-intersecting) polygons repaired by ``shapely.make_valid``.

    A repaired outline keeps its largest polygon part. The number repaired is logged and warned about,
    naming ``path``; an outline that encloses no area even after repair is refused.
    """
    array = np.asarray(geoms, dtype=object)
    present = np.array([g is not None for g in array])
    valid = np.ones(len(array), dtype=bool)
    if present.any():
        valid[present] = shapely.is_valid(array[present])
    bad = np.flatnonzero(~valid)
    if not len(bad):
        return list(array)
    for i in bad:
        repaired = shapely.make_valid(array[i])
        parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type == "Polygon" and g.area > 0]
        if not parts:
            raise InputError(path, f"cell {i} has an outline that encloses no area, even repaired")
        array[i] = max(parts, key=lambda g: g.area)
    text = (
        f"{path}: {len(bad)} of {len(array)} cell outlines were invalid (self-intersecting) and were "
        "repaired with shapely.make_valid (largest part kept)"
    )
    warnings.warn(text, UserWarning, stacklevel=3)
    return list(array)


def _read_parquet(path: Path) -> gpd.GeoDataFrame:
    """Read a GeoParquet written by geopandas (HEST ``*_cellvit_seg.parquet``)."""
    import geopandas as gpd

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
    return _frame(ids, classes, list(gdf.geometry.to_numpy()), path)


def read_cell_segmentation(path: str | Path, *, type_names: dict[int, str] | None = None) -> gpd.GeoDataFrame:
    """Read a cell segmentation (GeoParquet, GeoJSON, zipped GeoJSON or HoVer-Net JSON).

    Parameters
    ----------
    path
        ``*.parquet`` (GeoParquet with ``geometry``, optional ``class`` and ``cell_id``), ``*.geojson`` /
        ``*.json`` or ``*.geojson.zip``. GeoJSON may hold one Feature per cell (class in
        ``properties.classification.name``) or, as CellViT writes it, one MultiPolygon Feature per class,
        which is exploded into one row per polygon. A ``*.json`` whose top level is an object with a
        ``"nuc"`` key is HoVer-Net output (``infer/tile.py`` / ``infer/wsi.py`` of vqdang/hover_net):
        ``{"mag": 40, "nuc": {"1": {"bbox": [[r0, c0], [r1, c1]], "centroid": [x, y],
        "contour": [[x, y], ...], "type_prob": p, "type": t}, ...}}``. Its contour and centroid are
        ``[x, y]`` (the bbox is ``[row, col]`` and is ignored); coordinates are pixels at the magnification
        HoVer-Net processed (``mag``), i.e. level-0 pixels when that is the slide's base magnification —
        they are not rescaled here. Ids are the ``nuc`` keys; self-touching contours are repaired.
    type_names
        HoVer-Net only: class name of each numeric ``type``; default the PanNuke names of
        ``PANNUKE_TYPE_NAMES`` (1 Neoplastic, 2 Inflammatory, 3 Connective, 4 Dead, 5 Epithelial).
        Type 0 ("no label") and a missing/``null`` type give class ``None``.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per cell with ``cell_id`` (the file's ids when complete and unique, else 0..n-1),
        ``class`` (str or ``None``) and ``geometry`` (shapely Polygon, in the file's coordinates —
        level-0 pixels for HEST).

    Raises
    ------
    MissingInputError, InputError
        The file is missing, unreadable, or holds no polygons; a HoVer-Net nucleus has no contour, a
        contour with fewer than 3 points, or a type missing from ``type_names``.
    """
    path = require_file(path, "cell segmentation")
    name = path.name.lower()
    if name.endswith((".parquet", ".geoparquet")):
        return _read_parquet(path)
    if name.endswith(".json"):
        data = _load_geojson(path)
        if isinstance(data, dict) and "nuc" in data:
            return _read_hovernet(path, data, type_names)
        return _read_geojson(path, data)
    if name.endswith((".geojson", ".zip")):
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


def _json_number(value: np.floating) -> float:
    """``value`` as a float that JSON writes in the shortest form that reads back as the same ``value``
    (a float32 as ``7.9110036``, not ``7.911003589630127``)."""
    return float(str(value)) if isinstance(value, np.float32) else float(value)


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


def _feature(
    geom: Any,
    cls: Any,
    cell_id: Any,
    *,
    object_type: str = "detection",
    measurements: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Return one QuPath Feature (``objectType`` ``detection`` or ``cell``), with its measurements."""
    properties: dict[str, Any] = {"objectType": object_type}
    if cls is not None and not pd.isna(cls):
        properties["classification"] = {"name": str(cls), "color": _color(str(cls))}
    if cell_id is not None:
        properties["cell_id"] = _json_scalar(cell_id)
    if measurements:
        properties["measurements"] = measurements
    return {"type": "Feature", "geometry": mapping(geom), "properties": properties}


def write_cells_geojson(
    df: pd.DataFrame,
    path: str | Path,
    *,
    object_type: str = "detection",
    measurements: pd.DataFrame | None = None,
) -> Path:
    """Write cells as a GeoJSON FeatureCollection that QuPath imports as detections (or cells).

    Parameters
    ----------
    df
        Cells with a ``geometry`` column of shapely geometries (level-0 pixels), and optional ``class``
        and ``cell_id`` columns (e.g. from ``cells_frame`` or ``read_cell_segmentation``).
    path
        Output file; written to a temporary file in the same directory, then renamed.
    object_type
        QuPath's ``objectType`` of every feature: ``"detection"`` or ``"cell"``.
    measurements
        Numeric columns, one row per row of ``df``, written as each feature's ``measurements``: a JSON
        object of name → value, the form QuPath 0.4 and later write and read. Missing (NaN) values are
        left out of a feature's measurements; float32 columns are written in their shortest form.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if object_type not in ("detection", "cell"):
        raise ValueError(f"object_type must be 'detection' or 'cell', got {object_type!r}")
    if measurements is not None and len(measurements) != len(df):
        raise ValueError(f"{len(measurements)} rows of measurements for {len(df)} cells")
    geoms = df["geometry"].to_numpy()
    classes = df["class"].to_numpy() if "class" in df.columns else np.full(len(df), None, object)
    ids = df["cell_id"].to_numpy() if "cell_id" in df.columns else np.full(len(df), None, object)
    names = [] if measurements is None else [str(c) for c in measurements.columns]
    values = np.zeros((len(df), 0)) if measurements is None else measurements.to_numpy()
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    # The text is what json.dumps writes for the whole collection, written GEOJSON_CHUNK features at a time:
    # a slide's 10⁶ outlines as Python objects and one string would take several GiB (benchmarks/RESULTS.md).
    head, tail = json.dumps({"type": "FeatureCollection", "features": []}).split("[]")
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        handle.write(head + "[")
        first = True
        for start in range(0, len(df), GEOJSON_CHUNK):
            rows = slice(start, start + GEOJSON_CHUNK)
            features = [
                json.dumps(
                    _feature(
                        geom,
                        cls,
                        cell_id,
                        object_type=object_type,
                        measurements={
                            n: _json_number(v) for n, v in zip(names, row, strict=True) if np.isfinite(v)
                        },
                    ),
                    allow_nan=False,
                )
                for geom, cls, cell_id, row in zip(
                    geoms[rows], classes[rows], ids[rows], values[rows], strict=True
                )
                if geom is not None and not shapely.is_empty(geom)
            ]
            if features:
                handle.write(("" if first else ", ") + ", ".join(features))
                first = False
        handle.write("]" + tail)
    return path
