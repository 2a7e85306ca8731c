"""``cells.parquet``: unit assignment against independent geometry, backends, exports and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from bitro.cli import main
from bitro.errors import InputError
from bitro.io import read_sample
from bitro.io.sample import Sample
from bitro.io.slides import Slide
from bitro.preprocess.cells import (
    BAND_UM,
    assign_units,
    cells_table,
    export_cells_geojson,
    read_cells,
    write_cells,
)
from bitro.preprocess.segment import segmented_cells
from bitro.preprocess.tissue import tissue_mask
from bitro.preprocess.units import spot_units


def units_frame(xy: np.ndarray, diameter: float, shape: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unit_id": np.arange(len(xy)),
            "x_um": xy[:, 0],
            "y_um": xy[:, 1],
            "diameter_um": diameter,
            "shape": pd.Categorical([shape] * len(xy), categories=["circle", "square"]),
        }
    )


def shapely_assignment(points: np.ndarray, shapes: list[shapely.Geometry]) -> np.ndarray:
    out = np.full(len(points), -1)
    for i, p in enumerate(shapely.points(points)):
        holders = [k for k, s in enumerate(shapes) if s.covers(p)]
        if holders:
            out[i] = min(holders, key=lambda k: shapes[k].centroid.distance(p))
    return out


def test_points_go_to_the_spot_circle_that_holds_them() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[x, y] for y in range(0, 500, 100) for x in range(0, 500, 100)], float)
    centres[:, 0] += (np.arange(len(centres)) // 5 % 2) * 50  # Visium's offset rows
    points = rng.uniform(-60, 560, size=(3000, 2))
    found = assign_units(points[:, 0], points[:, 1], units_frame(centres, 55.0, "circle"))
    expected = shapely_assignment(points, [shapely.Point(c).buffer(27.5, 256) for c in centres])
    # The polygonised circle is a hair smaller than the true one: only points within 0.01 µm may differ.
    radius = np.min(np.hypot(*(points[:, None, :] - centres[None]).transpose(2, 0, 1)), axis=1)
    differ = found != expected
    assert np.all(np.abs(radius[differ] - 27.5) < 0.01)
    assert (found >= 0).sum() > 300


def test_points_go_to_the_patch_square_that_holds_them() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[27.5 + 55 * i, 27.5 + 55 * j] for j in range(6) for i in range(6)])
    points = rng.uniform(-20, 350, size=(3000, 2))
    found = assign_units(points[:, 0], points[:, 1], units_frame(centres, 55.0, "square"))
    squares = [shapely.box(x - 27.5, y - 27.5, x + 27.5, y + 27.5) for x, y in centres]
    assert np.array_equal(found, shapely_assignment(points, squares))


def table_of(sample: Sample, slide: Slide, cells: pd.DataFrame, source: str, origin: Path) -> pd.DataFrame:
    return cells_table(
        cells,
        mpp=slide.mpp,
        units=spot_units(sample),
        source=source,
        slide_dimensions=slide.dimensions,
        path=origin,
    )


def test_precomputed_backend_reads_the_demo_cellvit_parquet_exactly(small_demo: tuple[Path, dict]) -> None:
    root, _ = small_demo
    sample = read_sample("hest", root / "hest", "DEMO01")
    parquet = root / "hest" / "cellvit_seg" / "DEMO01_cellvit_seg.parquet"
    with sample.open_slide() as slide:
        cells, source, origin = segmented_cells(sample, slide, backend="precomputed", mask=tissue_mask(slide))
        table = table_of(sample, slide, cells, source, origin)
    assert origin == parquet and source == "cellvit"
    raw = gpd.read_parquet(parquet)
    assert len(table) == len(raw)
    by_id = table.set_index("cell_id").loc[raw["cell_id"].to_numpy()] if "cell_id" in raw else None
    expected = raw.assign(x=raw.geometry.centroid.x, y=raw.geometry.centroid.y, area=raw.geometry.area)
    if by_id is None:
        by_id = table.sort_values(["y_px", "x_px"]).reset_index(drop=True)
        expected = expected.sort_values(["y", "x"]).reset_index(drop=True)
    assert np.allclose(by_id["x_px"], expected["x"]) and np.allclose(by_id["y_px"], expected["y"])
    assert np.allclose(by_id["area_um2"], expected["area"] * sample.mpp**2)
    assert by_id["class"].astype(object).tolist() == expected["class"].tolist()
    polygons = shapely.from_wkb(by_id["geometry"].to_numpy())
    assert shapely.equals_exact(polygons, expected.geometry.to_numpy(), tolerance=1e-9).all()


def demo_table(small_demo: tuple[Path, dict]) -> pd.DataFrame:
    root, _ = small_demo
    sample = read_sample("hest", root / "hest", "DEMO02")
    with sample.open_slide() as slide:
        return cells_table(
            sample.cells,
            mpp=slide.mpp,
            units=spot_units(sample),
            source="cellvit",
            slide_dimensions=slide.dimensions,
            path=sample.slide_path,
        )


def test_cells_are_in_bands_and_assigned_like_independent_geometry(small_demo: tuple[Path, dict]) -> None:
    root, _ = small_demo
    table = demo_table(small_demo)
    band = np.floor(table["y_um"] / BAND_UM).to_numpy()
    assert np.all(np.diff(band) >= 0)
    within = np.diff(table["x_um"].to_numpy())[np.diff(band) == 0]
    assert np.all(within >= 0)
    sample = read_sample("hest", root / "hest", "DEMO02")
    units = spot_units(sample)
    circles = [
        shapely.Point(x, y).buffer(d / 2, 256) for x, y, d in units[["x_um", "y_um", "diameter_um"]].values
    ]
    points = table[["x_um", "y_um"]].to_numpy()
    expected = shapely_assignment(points, circles)
    differ = table["unit_id"].to_numpy() != expected
    assert differ.sum() <= 2 and (table["unit_id"] >= 0).sum() > 100


def test_cells_parquet_round_trip_is_geoparquet_and_geojson_opens_as_qupath_detections(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    table = demo_table(small_demo)
    write_cells(table, tmp_path / "cells.parquet")
    back = read_cells(tmp_path / "cells.parquet")
    pd.testing.assert_frame_equal(back, table)
    geo = gpd.read_parquet(tmp_path / "cells.parquet")
    assert len(geo) == len(table) and geo.geometry.geom_type.eq("Polygon").all()
    export_cells_geojson(table, tmp_path / "cells.geojson")
    features = json.loads((tmp_path / "cells.geojson").read_text())["features"]
    assert len(features) == len(table)
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert features[0]["properties"]["classification"]["name"] in set(table["class"].dropna())


def test_a_segmentation_for_another_slide_size_is_refused(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = small_demo
    raw = gpd.read_parquet(root / "hest" / "cellvit_seg" / "DEMO01_cellvit_seg.parquet")
    raw.geometry = raw.geometry.scale(4.0, 4.0, origin=(0, 0))  # made on a 4× larger scan
    wrong = tmp_path / "other_slide.parquet"
    raw.to_parquet(wrong)
    sample = read_sample("hest", root / "hest", "DEMO01")
    with sample.open_slide() as slide:
        cells, source, origin = segmented_cells(
            sample, slide, backend="precomputed", mask=tissue_mask(slide), segmentation=wrong
        )
        with pytest.raises(InputError, match=r"other_slide\.parquet.*outside the slide"):
            table_of(sample, slide, cells, source, origin)


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_bad_inputs_fail_clearly_and_leave_no_output(
    small_demo: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str], write_slide, rgb_image
) -> None:
    root, _ = small_demo
    sample = ["--format", "hest", "--root", root / "hest", "--sample", "DEMO01"]
    units = tmp_path / "units.parquet"
    assert run_cli("units", *sample, "--out", units) == 0

    no_geometry = tmp_path / "no_geometry.parquet"
    pd.DataFrame({"cell_id": [1, 2], "x": [1.0, 2.0], "y": [3.0, 4.0]}).to_parquet(no_geometry)
    out = tmp_path / "cells.parquet"
    code = run_cli(
        "cells", *sample, "--units", units, "--backend", "precomputed", "--segmentation", no_geometry,
        "--geojson", tmp_path / "cells.geojson", "--out", out,
    )  # fmt: skip
    assert code == 2
    assert "no_geometry.parquet" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cells.geojson").exists()

    # A TCGA slide scanned without a pixel size, and no override: refused before anything is written.
    layout = tmp_path / "tcga"
    shutil.copytree(root / "tcga", layout, ignore=shutil.ignore_patterns("*.tif", "truth"))
    original = next((root / "tcga" / "slides").glob("TCGA-DM-A002-01Z-00-DX1.*.tif"))
    write_slide(layout / "slides" / original.name, rgb_image(256, 256), mpp=None)
    tissue = tmp_path / "tissue.npz"
    bulk = ["--format", "tcga", "--root", layout, "--sample", "TCGA-DM-A002-01Z-00-DX1"]
    assert run_cli("tissue", *bulk, "--geojson", tmp_path / "tissue.geojson", "--out", tissue) == 2
    err = capsys.readouterr().err
    assert original.name in err and "pixel size" in err
    assert not tissue.exists() and not (tmp_path / "tissue.geojson").exists()
    assert run_cli("tissue", *bulk, "--mpp", "0.5", "--out", tissue) == 0 and tissue.exists()
    assert leftovers(tmp_path) == []


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial"))
