"""CellViT++ backend: command line, output location and conversion of the recorded output sample."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from bitro.errors import BitroError, ConfigError, InputError, MissingInputError
from bitro.preprocess.cellvit import (
    CELLVIT_CHECKPOINTS,
    cellvit_command,
    cellvit_environment,
    cellvit_output_path,
    read_cellvit_cells,
)

DATA = Path(__file__).parent / "data" / "cellvit"
SAM = "CellViT-SAM-H-x40-AMP.pth"

# The recorded sample, worked out by hand: (class, area, centroid x, centroid y, bounds).
EXPECTED = [
    ("Neoplastic", 100.0, 105.0, 205.0, (100, 200, 110, 210)),  # square 10 x 10
    ("Inflammatory", 54.0, 304.0, 403.0, (300, 400, 312, 409)),  # right triangle 12 x 9 / 2
    ("Connective", 120.0, 1510.0, 53.0, (1500, 50, 1520, 56)),  # wide rectangle 20 x 6
    ("Dead", 126.0, 1203.0, 306.0, (1197, 300, 1209, 312)),  # 12 x 12 octagon minus 4 corners of 4.5
    ("Epithelial", 64.0, 604.0, 1304.0, (600, 1300, 608, 1308)),  # square 8 x 8
    ("Neoplastic", 48.0, 942.0, 1403.0, (938, 1400, 946, 1406)),  # rectangle 8 x 6 at a patch margin
    ("Inflammatory", 40.0, 1105.0, 1100.0 + 8 / 3, (1100, 1100, 1110, 1108)),  # triangle 10 x 8 / 2
    ("Connective", 25.0, 1502.5, 1502.5, (1500, 1500, 1505, 1505)),  # square 5 x 5
]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    directory = tmp_path / "weights"
    directory.mkdir()
    (directory / SAM).write_bytes(b"checkpoint")
    (directory / "CellViT-256-x40-AMP.pth").write_bytes(b"checkpoint")
    return directory


def test_command_uses_local_weights_and_slide_options(tmp_path, weights):
    slide = tmp_path / "slides" / "S1.svs"
    outdir = tmp_path / "cellvit"
    argv = cellvit_command(slide=slide, outdir=outdir, model=weights / SAM, mpp=0.2425)
    assert argv == [
        "env",
        f"CELLVIT_CACHE={weights}",
        "cellvit-inference",
        "--model",
        "SAM",
        "--nuclei_taxonomy",
        "pannuke",
        "--gpu",
        "0",
        "--batch_size",
        "8",
        "--outdir",
        str(outdir),
        "process_wsi",
        "--wsi_path",
        str(slide),
        "--wsi_mpp",
        "0.2425",
    ]
    assert not any("http" in arg or "zenodo" in arg for arg in argv)
    assert cellvit_environment(weights) == {"CELLVIT_CACHE": str(weights)}


def test_command_optional_flags_follow_cellvit_cli_layout(tmp_path, weights):
    argv = cellvit_command(
        slide=Path("S2.tif"),
        outdir=Path("out"),
        model=weights / "CellViT-256-x40-AMP.pth",
        mpp=0.5,
        magnification=20.0,
        batch_size=16,
        gpu=1,
        geojson=True,
        cpu_count=8,
        ray_workers=1,
    )
    sub = argv.index("process_wsi")
    globals_, wsi = argv[:sub], argv[sub:]
    assert globals_[:5] == ["env", f"CELLVIT_CACHE={weights}", "cellvit-inference", "--model", "HIPT"]
    for option, value in [("--gpu", "1"), ("--batch_size", "16"), ("--outdir", "out")]:
        assert globals_[globals_.index(option) + 1] == value
    assert globals_[globals_.index("--cpu_count") + 1] == "8"
    assert globals_[globals_.index("--ray_worker") + 1] == "1"
    assert "--geojson" in globals_
    # options of the process_wsi sub-command come after it; magnification is parsed as int by CellViT++
    assert wsi == ["process_wsi", "--wsi_path", "S2.tif", "--wsi_mpp", "0.5", "--wsi_magnification", "20"]


def test_command_refuses_what_would_download_or_fail(tmp_path, weights):
    slide, out = Path("s.svs"), Path("out")
    with pytest.raises(MissingInputError, match=re.escape("missing.pth")):
        cellvit_command(slide=slide, outdir=out, model=weights / "missing.pth", mpp=0.25)
    renamed = weights / "my_cellvit.pth"
    shutil.copy(weights / SAM, renamed)
    with pytest.raises(InputError, match=re.escape("my_cellvit.pth")) as info:
        cellvit_command(slide=slide, outdir=out, model=renamed, mpp=0.25)
    assert all(name in str(info.value) for name in CELLVIT_CHECKPOINTS)
    with pytest.raises(MissingInputError, match=re.escape("classifier/sam-h/lizard.pth")):
        cellvit_command(slide=slide, outdir=out, model=weights / SAM, mpp=0.25, taxonomy="lizard")
    (weights / "classifier" / "sam-h").mkdir(parents=True)
    (weights / "classifier" / "sam-h" / "lizard.pth").write_bytes(b"classifier")
    argv = cellvit_command(slide=slide, outdir=out, model=weights / SAM, mpp=0.25, taxonomy="lizard")
    assert argv[argv.index("--nuclei_taxonomy") + 1] == "lizard"
    bad = [
        {"taxonomy": "nuclei"},
        {"mpp": 0.0},
        {"mpp": 1.0},
        {"mpp": float("nan")},
        {"magnification": 40.5},
        {"batch_size": 1},
        {"batch_size": 32},
        {"gpu": -1},
    ]
    for options in bad:
        kwargs = {"slide": slide, "outdir": out, "model": weights / SAM, "mpp": 0.25} | options
        with pytest.raises(BitroError):
            cellvit_command(**kwargs)
    with pytest.raises(ConfigError, match="midog"):
        cellvit_command(
            slide=slide, outdir=out, model=weights / "CellViT-256-x40-AMP.pth", mpp=0.25, taxonomy="midog"
        )


def test_output_path(tmp_path):
    out = tmp_path / "cellvit"
    assert cellvit_output_path(out, Path("/data/S1.svs")) == out / "S1" / "cells.json"
    assert cellvit_output_path(out, Path("/data/S1.ome.tif")) == out / "S1.ome" / "cells.json"
    assert cellvit_output_path(out, Path("/data/case7/IMG0001.dcm")) == out / "case7" / "cells.json"
    dicom_dir = tmp_path / "case8"
    dicom_dir.mkdir()
    assert cellvit_output_path(out, dicom_dir) == out / "case8" / "cells.json"


def _check_sample(cells, *, ordered_as=EXPECTED):
    assert list(cells.columns) == ["cell_id", "class", "geometry"]
    assert len(cells) == len(ordered_as) == 8
    assert cells["cell_id"].tolist() == list(range(8))
    assert cells["class"].tolist() == [e[0] for e in ordered_as]
    assert (cells.geometry.geom_type == "Polygon").all()
    for geom, (_, area, cx, cy, bounds) in zip(cells.geometry, ordered_as, strict=True):
        assert geom.area == pytest.approx(area)
        assert (geom.centroid.x, geom.centroid.y) == pytest.approx((cx, cy))
        assert geom.bounds == pytest.approx(bounds)  # (minx, miny, maxx, maxy): contour is [x, y]


def test_recorded_cells_json(tmp_path):
    cells = read_cellvit_cells(DATA / "cells.json")
    _check_sample(cells)
    raw = json.loads((DATA / "cells.json").read_text())["cells"]
    for geom, cell in zip(cells.geometry, raw, strict=True):
        (row0, col0), (row1, col1) = cell["bbox"]  # bbox is [row, col] = [y, x], max exclusive
        minx, miny, maxx, maxy = geom.bounds
        assert (minx, miny, maxx + 1, maxy + 1) == (col0, row0, col1, row1)
        x, y = cell["centroid"]  # CellViT's rounded mask centroid is [x, y] too
        assert abs(geom.centroid.x - x) <= 0.5 and abs(geom.centroid.y - y) <= 0.5


def test_recorded_cells_geojson_same_polygons():
    cells = read_cellvit_cells(DATA / "cells.geojson")
    by_type = sorted(
        EXPECTED, key=lambda e: ["Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"].index(e[0])
    )
    _check_sample(cells, ordered_as=by_type)


def test_snappy_variant(tmp_path):
    for name in ("cells.json", "cells.geojson"):
        packed = tmp_path / f"{name}.snappy"
        packed.write_bytes(pa.Codec("snappy").compress((DATA / name).read_bytes(), asbytes=True))
        assert len(read_cellvit_cells(packed)) == 8
    bogus = tmp_path / "bogus.json.snappy"
    bogus.write_bytes(b"\x05not snappy at all")
    with pytest.raises(InputError, match=re.escape("bogus.json.snappy")):
        read_cellvit_cells(bogus)


def test_original_cellvit_cells_json(tmp_path):
    data = json.loads((DATA / "cells.json").read_text())
    data["type_map"] = {
        "Background": 0,
        "Neoplastic": 1,
        "Inflammatory": 2,
        "Connective": 3,
        "Dead": 4,
        "Epithelial": 5,
    }
    data["processed_patches"] = ["0_0", "0_1", "1_0", "1_1"]
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(data))
    _check_sample(read_cellvit_cells(path))
    data["wsi_metadata"]["downsampling"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"cells\.json.*downsampling 2"):
        read_cellvit_cells(path)


def test_other_taxonomy_type_map(tmp_path):
    data = json.loads((DATA / "cells.json").read_text())
    data["type_map"] = {"0": "background", "1": "nuclei"}
    for cell in data["cells"]:
        cell["type"] = 1
    path = tmp_path / "binary.json"
    path.write_text(json.dumps(data))
    assert read_cellvit_cells(path)["class"].tolist() == ["nuclei"] * 8


def _sample_with(tmp_path: Path, name: str, change) -> Path:
    data = json.loads((DATA / "cells.json").read_text())
    change(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_crossing_contour_with_a_spike_keeps_its_largest_part(tmp_path):
    """A contour that crosses itself and has a spike (CellViT++ wrote one on a demo slide) is repaired.

    shapely's make_valid returns a GeometryCollection of a MultiPolygon (the two lobes) and a
    LineString (the spike); the larger lobe is kept rather than the cell refused as degenerate.
    """
    contour = [[0, 0], [10, 10], [10, 0], [14, 0], [10, 0], [0, 12]]

    def change(data):
        data["cells"][0]["contour"] = contour

    cells = read_cellvit_cells(_sample_with(tmp_path, "crossing.json", change))
    assert len(cells) == 8
    lobe = cells.geometry.iloc[0]
    assert lobe.is_valid
    assert lobe.area == pytest.approx(360 / 11)  # the lobe left of the crossing at x = 60/11
    assert lobe.bounds == pytest.approx((0, 0, 60 / 11, 12))


def test_bad_cellvit_files_name_the_file(tmp_path):
    with pytest.raises(MissingInputError, match=re.escape("absent_cells.json")):
        read_cellvit_cells(tmp_path / "absent_cells.json")
    broken = tmp_path / "broken_cells.json"
    broken.write_text('{"cells": [')
    with pytest.raises(InputError, match=re.escape("broken_cells.json")):
        read_cellvit_cells(broken)
    wrong_kind = tmp_path / "cells.txt"
    wrong_kind.write_text("{}")
    with pytest.raises(InputError, match=re.escape("cells.txt")):
        read_cellvit_cells(wrong_kind)
    cases = {
        "no_cells.json": (lambda d: d.pop("cells"), 'a "cells" list'),
        "empty_cells.json": (lambda d: d.update(cells=[]), "holds no cells"),
        "no_contour.json": (lambda d: d["cells"][3].pop("contour"), "cell 3 has no contour"),
        "short_contour.json": (
            lambda d: d["cells"][2].update(contour=[[1, 1], [5, 5]]),
            "cell 2 has a contour with fewer than 3 points",
        ),
        "unknown_type.json": (lambda d: d["cells"][1].update(type=7), "cell 1 has type 7"),
        "bad_type_map.json": (lambda d: d.update(type_map=["Neoplastic"]), '"type_map" must be'),
        "cell_not_object.json": (lambda d: d["cells"].append("cell"), "cell 8 is not an object"),
    }
    for name, (change, problem) in cases.items():
        with pytest.raises(InputError, match=re.escape(name)) as info:
            read_cellvit_cells(_sample_with(tmp_path, name, change))
        assert problem in str(info.value), name


def test_cell_detection_json_is_not_cells(tmp_path):
    data = json.loads((DATA / "cells.json").read_text())
    data["cells"] = [{k: c[k] for k in ("bbox", "centroid", "type")} for c in data["cells"]]
    path = tmp_path / "cell_detection.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=re.escape("cell_detection.json")) as info:
        read_cellvit_cells(path)
    assert "cell 0 has no contour" in str(info.value)
