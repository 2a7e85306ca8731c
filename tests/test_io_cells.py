"""Tests for bitro.io.cells."""

from __future__ import annotations

import json
import re
import zipfile

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, mapping

from bitro.errors import InputError, MissingInputError
from bitro.io.cells import cells_frame, read_cell_segmentation, write_cells_geojson

CLASSES = ["Neoplastic", "Inflammatory", "Connective", "Neoplastic", "Dead", "Epithelial", "Neoplastic"]


@pytest.fixture
def cells_gdf() -> gpd.GeoDataFrame:
    rng = np.random.default_rng(3)
    polys = [
        Point(x, y).buffer(r, quad_segs=4)
        for x, y, r in zip(
            rng.uniform(50, 900, len(CLASSES)),
            rng.uniform(50, 900, len(CLASSES)),
            rng.uniform(4, 9, 7),
            strict=True,
        )
    ]
    return gpd.GeoDataFrame({"cell_id": np.arange(len(CLASSES)), "class": CLASSES}, geometry=polys)


def _write_per_cell(gdf, path):
    features = [
        {
            "type": "Feature",
            "geometry": mapping(geom),
            "properties": {"objectType": "detection", "classification": {"name": cls, "color": [1, 2, 3]}},
        }
        for geom, cls in zip(gdf.geometry, gdf["class"], strict=True)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _write_per_class(gdf, path):
    features = []
    for cls, group in gdf.groupby("class", sort=True):
        geom = MultiPolygon(list(group.geometry))
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(geom),
                "properties": {"objectType": "annotation", "classification": {"name": cls}},
            }
        )
    path.write_text(json.dumps(features))  # CellViT writes a bare list of features
    return path


def _key(gdf) -> list[tuple[str | None, str]]:
    norm = shapely.normalize(np.asarray(gdf.geometry.to_numpy(), dtype=object))
    return sorted(zip(gdf["class"], shapely.to_wkt(norm, rounding_precision=6), strict=True))


def test_parquet_and_both_geojson_shapes_read_to_same_cells(tmp_path, cells_gdf):
    parquet = tmp_path / "s_cellvit_seg.parquet"
    cells_gdf.to_parquet(parquet)
    per_cell = _write_per_cell(cells_gdf, tmp_path / "per_cell.geojson")
    per_class = _write_per_class(cells_gdf, tmp_path / "per_class.geojson")
    zipped = tmp_path / "s_cellvit_seg.geojson.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(per_class, "s_cellvit_seg.geojson")

    from_parquet = read_cell_segmentation(parquet)
    assert list(from_parquet.columns) == ["cell_id", "class", "geometry"]
    assert from_parquet["cell_id"].tolist() == list(range(len(CLASSES)))
    expected = _key(cells_gdf)
    assert _key(from_parquet) == expected
    for path in (per_cell, per_class, zipped):
        cells = read_cell_segmentation(path)
        assert len(cells) == len(CLASSES)
        assert cells["cell_id"].is_unique
        assert (cells.geometry.geom_type == "Polygon").all()
        assert _key(cells) == expected, path.name


def test_missing_class_is_none(tmp_path, cells_gdf):
    path = tmp_path / "noclass.parquet"
    cells_gdf.drop(columns=["class", "cell_id"]).to_parquet(path)
    cells = read_cell_segmentation(path)
    assert cells["class"].isna().all()
    assert cells["cell_id"].tolist() == list(range(len(CLASSES)))


def test_cells_frame_centroids_and_um(cells_gdf):
    frame = cells_frame(cells_gdf, mpp=0.5, source="cellvit")
    assert list(frame.columns) == [
        "cell_id",
        "x_px",
        "y_px",
        "x_um",
        "y_um",
        "area_um2",
        "class",
        "source",
        "geometry",
    ]
    first = cells_gdf.geometry.iloc[0]
    assert frame.loc[0, "x_px"] == pytest.approx(first.centroid.x)
    assert frame.loc[0, "y_um"] == pytest.approx(first.centroid.y * 0.5)
    assert frame.loc[0, "area_um2"] == pytest.approx(first.area * 0.25)
    assert (frame["source"] == "cellvit").all()
    assert frame["class"].tolist() == CLASSES


def test_exported_geojson_rereads_to_same_polygons(tmp_path, cells_gdf):
    frame = cells_frame(cells_gdf, mpp=0.5, source="cellvit")
    out = write_cells_geojson(frame, tmp_path / "export" / "cells.geojson")
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["cells.geojson"]  # no temp file left

    raw = json.loads(out.read_text())
    assert raw["type"] == "FeatureCollection" and len(raw["features"]) == len(CLASSES)
    props = raw["features"][0]["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"]["name"] == CLASSES[0]

    reread = gpd.read_file(out)
    assert len(reread) == len(CLASSES)
    for original, back in zip(cells_gdf.geometry, reread.geometry, strict=True):
        assert original.equals_exact(back, tolerance=1e-9)
    assert _key(read_cell_segmentation(out)) == _key(cells_gdf)


def test_bad_segmentations_rejected(tmp_path):
    with pytest.raises(MissingInputError, match=re.escape("nothing.parquet")):
        read_cell_segmentation(tmp_path / "nothing.parquet")
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json")
    with pytest.raises(InputError, match=re.escape("garbage.geojson")):
        read_cell_segmentation(garbage)
    points = tmp_path / "points.geojson"
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(InputError, match=re.escape("points.geojson")):
        read_cell_segmentation(points)
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 nope")
    with pytest.raises(InputError, match=re.escape("bad.parquet")):
        read_cell_segmentation(bad_parquet)


@pytest.mark.parametrize("chunk", [1, 2, 3, 10_000])
def test_geojson_written_in_chunks_is_one_json_dumps(tmp_path, cells_gdf, monkeypatch, chunk):
    """The writer streams GEOJSON_CHUNK features at a time (a slide's 10⁶ outlines at once took several GiB):
    the text is exactly json.dumps of the whole collection, empty outlines and NaN values left out."""
    import pandas as pd

    import bitro.io.cells as cells_module
    from bitro.io.cells import _feature, _json_number

    frame = cells_frame(cells_gdf, mpp=0.5, source="cellvit")
    frame.loc[2, "geometry"] = shapely.Polygon()  # skipped
    values = np.arange(2 * len(frame), dtype=np.float32).reshape(-1, 2) / 7
    values[4, 1] = np.nan
    measurements = pd.DataFrame(values, columns=["a", "b"])
    expected = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                geom,
                cls,
                cell_id,
                object_type="cell",
                measurements={n: _json_number(v) for n, v in zip("ab", row, strict=True) if np.isfinite(v)},
            )
            for geom, cls, cell_id, row in zip(
                frame["geometry"], frame["class"], frame["cell_id"], values, strict=True
            )
            if not geom.is_empty
        ],
    }
    monkeypatch.setattr(cells_module, "GEOJSON_CHUNK", chunk)
    out = write_cells_geojson(
        frame, tmp_path / "cells.geojson", object_type="cell", measurements=measurements
    )
    assert out.read_text() == json.dumps(expected)
    features = json.loads(out.read_text())["features"]
    assert len(features) == len(frame) - 1 and "b" not in features[3]["properties"]["measurements"]
