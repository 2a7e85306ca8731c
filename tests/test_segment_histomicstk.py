"""The ``histomicstk`` segmentation backend: HistomicsTK's Kofahi detection writes a valid cells.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from bitro.cli import main
from bitro.preprocess.cells import read_cells
from bitro.preprocess.segment import match_centroids

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "resources" / "stain" / "reference.json"


def run(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def prepared(small_demo: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """DEMO01's tissue, units and stain, made by the command line as the workflow makes them."""
    root, _ = small_demo
    out = tmp_path_factory.mktemp("htk_cells")
    sample = ["--format", "hest", "--root", root / "hest", "--sample", "DEMO01"]
    assert run("tissue", *sample, "--out", out / "tissue.npz") == 0
    assert run("units", *sample, "--tissue", out / "tissue.npz", "--out", out / "units.parquet") == 0
    stain = ["--tissue", out / "tissue.npz", "--reference", REFERENCE, "--out", out / "stain.json"]
    assert run("stain", *sample, "--method", "histomicstk_macenko_pca", *stain) == 0
    return {"root": root, "out": out, "sample": sample}


def test_histomicstk_backend_writes_a_valid_cells_parquet(prepared: dict) -> None:
    root, out, sample = prepared["root"], prepared["out"], prepared["sample"]
    cells_path = out / "cells.parquet"
    code = run(
        "cells", *sample, "--backend", "histomicstk", "--tissue", out / "tissue.npz",
        "--units", out / "units.parquet", "--stain", out / "stain.json",
        "--geojson", out / "cells.geojson", "--out", cells_path,
    )  # fmt: skip
    assert code == 0
    table = read_cells(cells_path)
    frame = gpd.read_parquet(cells_path)  # GeoParquet: outlines decode as polygons
    assert len(table) == len(frame) > 500
    assert set(table["source"]) == {"histomicstk"}
    assert table["cell_id"].is_unique
    units = pd.read_parquet(out / "units.parquet")
    assert table["unit_id"].between(-1, len(units) - 1).all() and (table["unit_id"] >= 0).any()
    # Micrometres agree with pixels (0.5 µm/px), and each area is its outline's (simplified by ≤ ½ px).
    assert np.allclose(table["x_um"], table["x_px"] * 0.5) and np.allclose(table["y_um"], table["y_px"] * 0.5)
    assert frame.geometry.is_valid.all() and (frame.geom_type == "Polygon").all()
    polygon_um2 = shapely.area(frame.geometry.to_numpy()) * 0.25
    assert np.median(np.abs(polygon_um2 - table["area_um2"]) / table["area_um2"]) < 0.2
    assert table["area_um2"].between(8.0, 400.0).all()
    # Each centroid lies inside (or within a pixel of) its own outline.
    inside = shapely.distance(frame.geometry.to_numpy(), shapely.points(table["x_px"], table["y_px"]))
    assert np.quantile(inside, 0.99) <= 1.0
    geojson = json.loads((out / "cells.geojson").read_text())
    assert len(geojson["features"]) == len(table)
    # The nuclei are the demo's: both precision and recall at least 0.75 within 4 µm (classical: 0.8).
    truth = gpd.read_parquet(root / "hest" / "truth" / "DEMO01_cells.parquet").geometry.centroid
    found, _ = match_centroids(
        table[["x_px", "y_px"]].to_numpy(), np.column_stack([truth.x, truth.y]), radius=8
    )
    assert len(found) / len(table) >= 0.75 and len(found) / len(truth) >= 0.75


def test_histomicstk_backend_refuses_a_bad_stain_file_naming_it(
    prepared: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, sample = prepared["out"], prepared["sample"]
    bad = tmp_path / "broken_stain.json"
    bad.write_text('{"slide": {"method": "histomicstk_xu_snmf", "matrix": [[1, 0]]}}')
    code = run(
        "cells", *sample, "--backend", "histomicstk", "--tissue", out / "tissue.npz",
        "--units", out / "units.parquet", "--stain", bad, "--out", tmp_path / "cells.parquet",
    )  # fmt: skip
    assert code == 2
    assert "broken_stain.json" in capsys.readouterr().err
    assert not (tmp_path / "cells.parquet").exists()


def test_histomicstk_backend_gives_the_same_cells_with_two_workers(small_demo: tuple[Path, dict]) -> None:
    from dataclasses import replace

    from bitro.io import open_slide
    from bitro.preprocess.segment import ClassicalParams, segment_classical
    from bitro.preprocess.stain import fit_slide_stain
    from bitro.preprocess.tissue import tissue_mask

    root, _ = small_demo
    params = replace(ClassicalParams(), algorithm="histomicstk", batch_tiles=1, polygons=False)
    with open_slide(root / "hest" / "wsis" / "DEMO02.tif") as slide:
        mask = tissue_mask(slide)
        model = fit_slide_stain(slide, mask)
        one = segment_classical(slide, mask, model, params=params, workers=1, progress=False)
        two = segment_classical(slide, mask, model, params=params, workers=2, progress=False)
    assert len(one) > 500
    assert np.allclose(
        one[["x_px", "y_px", "area_um2"]].to_numpy(), two[["x_px", "y_px", "area_um2"]].to_numpy()
    )
