"""HoVer-Net JSON (vqdang/hover_net ``infer/tile.py`` / ``infer/wsi.py``) read by read_cell_segmentation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from shapely.geometry import Polygon, mapping

from bitro.errors import InputError
from bitro.io.cells import cells_frame, read_cell_segmentation

# Hand-made nuclei in HoVer-Net's layout: bbox [[rmin, cmin], [rmax, cmax]] (row/col, max exclusive),
# centroid [x, y], contour [[x, y], ...] (not closed), type_prob, type (PanNuke numbering).
NUCLEI = {
    # square x 10..14, y 20..24: area 16, centroid (12, 22)
    "3": {
        "bbox": [[20, 10], [25, 15]],
        "centroid": [12.0, 22.0],
        "contour": [[10, 20], [14, 20], [14, 24], [10, 24]],
        "type_prob": 0.93,
        "type": 1,
    },
    # right triangle (100, 50), (106, 50), (100, 59): area 6 * 9 / 2 = 27, centroid (102, 53)
    "7": {
        "bbox": [[50, 100], [60, 107]],
        "centroid": [102.0, 53.0],
        "contour": [[100, 50], [106, 50], [100, 59]],
        "type_prob": 0.81,
        "type": 2,
    },
    # wide rectangle x 200..210, y 30..34: area 40, centroid (205, 32) -- catches an x/y swap
    "12": {
        "bbox": [[30, 200], [35, 211]],
        "centroid": [205.0, 32.0],
        "contour": [[200, 30], [210, 30], [210, 34], [200, 34]],
        "type_prob": 0.66,
        "type": 0,
    },
    # square x 0..3, y 0..3: area 9, centroid (1.5, 1.5)
    "15": {
        "bbox": [[0, 0], [4, 4]],
        "centroid": [1.5, 1.5],
        "contour": [[0, 0], [3, 0], [3, 3], [0, 3]],
        "type_prob": 0.7,
        "type": 5,
    },
    # square x 40..42, y 40..42 without a type head: area 4, centroid (41, 41)
    "20": {
        "bbox": [[40, 40], [43, 43]],
        "centroid": [41.0, 41.0],
        "contour": [[40, 40], [42, 40], [42, 42], [40, 42]],
        "type_prob": None,
        "type": None,
    },
}

EXPECTED = {  # id: (class, area, centroid x, centroid y)
    3: ("Neoplastic", 16.0, 12.0, 22.0),
    7: ("Inflammatory", 27.0, 102.0, 53.0),
    12: (None, 40.0, 205.0, 32.0),
    15: ("Epithelial", 9.0, 1.5, 1.5),
    20: (None, 4.0, 41.0, 41.0),
}


def _write(path: Path, nuc: object, mag: object = 40) -> Path:
    path.write_text(json.dumps({"mag": mag, "nuc": nuc}))
    return path


def test_hovernet_ids_classes_areas_centroids(tmp_path):
    cells = read_cell_segmentation(_write(tmp_path / "tile_0.json", NUCLEI))
    assert list(cells.columns) == ["cell_id", "class", "geometry"]
    assert cells["cell_id"].tolist() == [3, 7, 12, 15, 20]
    assert (cells.geometry.geom_type == "Polygon").all()
    for cell_id, cls, geom in zip(cells["cell_id"], cells["class"], cells.geometry, strict=True):
        want_cls, area, cx, cy = EXPECTED[cell_id]
        assert cls == want_cls, cell_id
        assert geom.area == pytest.approx(area), cell_id
        assert geom.centroid.x == pytest.approx(cx), cell_id
        assert geom.centroid.y == pytest.approx(cy), cell_id
    wide = cells.geometry[cells["cell_id"] == 12].iloc[0]
    assert wide.bounds == (200.0, 30.0, 210.0, 34.0)  # contour is [x, y], not [row, col]


def test_hovernet_polygon_centroid_matches_hovernet_centroid(tmp_path):
    cells = read_cell_segmentation(_write(tmp_path / "tile.json", NUCLEI))
    frame = cells_frame(cells, mpp=0.25, source="hovernet")
    for row in frame.itertuples():
        x, y = NUCLEI[str(row.cell_id)]["centroid"]
        assert (row.x_px, row.y_px) == pytest.approx((x, y))
    assert frame.set_index("cell_id").loc[7, "area_um2"] == pytest.approx(27.0 * 0.0625)


def test_hovernet_string_ids_and_null_mag(tmp_path):
    nuc = {"a": NUCLEI["3"], "b": NUCLEI["7"]}
    cells = read_cell_segmentation(_write(tmp_path / "tile.json", nuc, mag=None))
    assert cells["cell_id"].tolist() == ["a", "b"]
    assert cells["class"].tolist() == ["Neoplastic", "Inflammatory"]


def test_hovernet_type_names_override(tmp_path):
    path = _write(tmp_path / "tile.json", NUCLEI)
    names = {1: "Tumour", 2: "Lymphocyte", 5: "Epithelium"}
    cells = read_cell_segmentation(path, type_names=names)
    assert cells["class"].tolist() == ["Tumour", "Lymphocyte", None, "Epithelium", None]
    with pytest.raises(InputError, match=r"tile\.json.*nucleus 7.*type 2"):
        read_cell_segmentation(path, type_names={1: "Tumour", 5: "Epithelium"})


def test_hovernet_self_touching_contour_is_repaired(tmp_path):
    bowtie = {
        "bbox": [[0, 0], [5, 5]],
        "centroid": [2, 2],
        "contour": [[0, 0], [4, 4], [4, 0], [0, 4]],
        "type": 3,
    }
    cells = read_cell_segmentation(_write(tmp_path / "tile.json", {"1": bowtie}))
    geom = cells.geometry.iloc[0]
    assert geom.is_valid and geom.geom_type == "Polygon"
    assert geom.area == pytest.approx(4.0)  # the larger of the two 4-px² triangles
    assert cells["class"].tolist() == ["Connective"]


def test_json_geojson_still_read_as_geojson(tmp_path):
    square = Polygon([(0, 0), (2, 0), (2, 2), (0, 2)])
    feature = {
        "type": "Feature",
        "geometry": mapping(square),
        "properties": {"classification": {"name": "Dead"}},
    }
    path = tmp_path / "cells.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    cells = read_cell_segmentation(path)
    assert cells["class"].tolist() == ["Dead"]
    assert cells.geometry.iloc[0].area == pytest.approx(4.0)


def _nucleus(**changes: object) -> dict[str, object]:
    return {**NUCLEI["3"], **changes}


@pytest.mark.parametrize(
    ("nuc", "problem"),
    [
        ([NUCLEI["3"]], '"nuc" must be an object'),
        ("nope", '"nuc" must be an object'),
        ({}, "no nuclei"),
        ({"5": [1, 2, 3]}, "nucleus 5 is not an object"),
        ({"5": {k: v for k, v in NUCLEI["3"].items() if k != "contour"}}, "nucleus 5 has no contour"),
        ({"5": _nucleus(contour=[[1, 1], [4, 4]])}, "nucleus 5 has a contour with fewer than 3 points"),
        ({"5": _nucleus(contour=[7, 9])}, "nucleus 5 has a contour with fewer than 3 points"),
        ({"5": _nucleus(contour=[[1, 1], [1, 1], [1, 1], [4, 4]])}, "nucleus 5 has a contour with fewer"),
        ({"5": _nucleus(contour=[[0, 0], [1, 1], [2, 2]])}, "nucleus 5 has a degenerate contour"),
        ({"5": _nucleus(contour=[[0, 0, 0], [1, 0, 0], [1, 1, 0]])}, "nucleus 5 has a contour that is not"),
        ({"5": _nucleus(contour=[[0, 0], [1, "x"], [1, 1]])}, "nucleus 5 has a malformed contour"),
        ({"5": _nucleus(contour=None)}, "nucleus 5 has a contour that is not"),
        ({"5": _nucleus(type=9)}, "nucleus 5 has type 9"),
        ({"5": _nucleus(type="Neoplastic")}, "nucleus 5 has a non-integer type"),
    ],
)
def test_bad_hovernet_json_names_file(tmp_path, nuc, problem):
    path = _write(tmp_path / "bad_hovernet.json", nuc)
    with pytest.raises(InputError, match=re.escape("bad_hovernet.json")) as info:
        read_cell_segmentation(path)
    assert problem in str(info.value)


def test_unreadable_hovernet_json_names_file(tmp_path):
    path = tmp_path / "broken_hovernet.json"
    path.write_text('{"mag": 40, "nuc": {"1": ')
    with pytest.raises(InputError, match=re.escape("broken_hovernet.json")) as info:
        read_cell_segmentation(path)
    assert "not readable JSON" in str(info.value)
    odd = tmp_path / "odd.json"
    odd.write_text("42")
    with pytest.raises(InputError, match=re.escape("odd.json")):
        read_cell_segmentation(odd)
