"""Classical nucleus segmentation against the demo's true nuclei; tiling, workers and resume."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from scipy.spatial import cKDTree

import bitro.preprocess.segment as segment
from bitro.io import open_slide
from bitro.preprocess.segment import ClassicalParams, match_centroids, segment_classical
from bitro.preprocess.stain import fit_slide_stain
from bitro.preprocess.tissue import tissue_mask


def true_centroids(root: Path, sid: str) -> np.ndarray:
    truth = gpd.read_parquet(root / "hest" / "truth" / f"{sid}_cells.parquet")
    centroids = truth.geometry.centroid
    return np.column_stack([centroids.x, centroids.y])


@pytest.fixture(scope="module")
def demo_slide(small_demo: tuple[Path, dict]) -> dict:
    root, _ = small_demo
    path = root / "hest" / "wsis" / "DEMO01.tif"
    with open_slide(path) as slide:
        mask = tissue_mask(slide)
        model = fit_slide_stain(slide, mask)
        cells = segment_classical(slide, mask, model, progress=False)
    return {"path": path, "mask": mask, "model": model, "cells": cells, "root": root}


def test_match_centroids_is_one_to_one_and_closest_first() -> None:
    found = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]])
    truth = np.array([[0.5, 0.0], [1.2, 0.0], [30.0, 30.0]])
    f, t = match_centroids(found, truth, radius=2.0)
    assert sorted(zip(f.tolist(), t.tolist(), strict=True)) == [(0, 0), (1, 1)]


@pytest.mark.parametrize("sid", ["DEMO01", "DEMO02"])
def test_classical_finds_the_true_nuclei(small_demo: tuple[Path, dict], sid: str) -> None:
    """Precision and recall ≥ 0.8 with centroids matched one-to-one within 4 µm."""
    root, _ = small_demo
    with open_slide(root / "hest" / "wsis" / f"{sid}.tif") as slide:
        mask = tissue_mask(slide)
        cells = segment_classical(slide, mask, fit_slide_stain(slide, mask), progress=False)
        radius_px = 4.0 / slide.mpp
    truth = true_centroids(root, sid)
    found, _ = match_centroids(cells[["x_px", "y_px"]].to_numpy(), truth, radius=radius_px)
    precision, recall = len(found) / len(cells), len(found) / len(truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)


def test_outlines_and_areas_agree(demo_slide: dict) -> None:
    cells = demo_slide["cells"]
    polygons = shapely.from_wkb(cells["geometry"].to_numpy())
    assert shapely.is_valid(polygons).mean() > 0.99
    centroids = shapely.centroid(polygons)
    offset = np.hypot(shapely.get_x(centroids) - cells["x_px"], shapely.get_y(centroids) - cells["y_px"])
    assert np.median(offset) < 0.5  # level-0 px
    # The outline runs through boundary pixel centres, so it encloses a little less than the pixel area.
    ratio = shapely.area(polygons) * 0.25 / cells["area_um2"].to_numpy()
    assert 0.7 < np.median(ratio) < 1.0
    assert cells["area_um2"].between(8.0, 400.0).all()


def test_cells_on_tile_borders_are_found_once(demo_slide: dict) -> None:
    """Tiles of 64 µm cut through many nuclei; each is still reported once, as with one big tile."""
    with open_slide(demo_slide["path"]) as slide:
        small = segment_classical(
            slide,
            demo_slide["mask"],
            demo_slide["model"],
            params=ClassicalParams(tile_um=64.0, threshold=demo_slide["cells"].attrs["threshold"]),
            progress=False,
        )
    big = demo_slide["cells"]
    xy_small, xy_big = small[["x_px", "y_px"]].to_numpy(), big[["x_px", "y_px"]].to_numpy()
    pairs = cKDTree(xy_small).query_pairs(r=2.0)
    assert not pairs, f"{len(pairs)} nuclei reported twice"
    matched, _ = match_centroids(xy_small, xy_big, radius=1.0)
    assert len(matched) >= 0.97 * len(big) and abs(len(small) - len(big)) <= 0.03 * len(big)


def test_two_workers_give_the_same_cells(demo_slide: dict) -> None:
    params = ClassicalParams(tile_um=128.0, batch_tiles=2)
    with open_slide(demo_slide["path"]) as slide:
        one = segment_classical(slide, demo_slide["mask"], demo_slide["model"], params=params, progress=False)
        two = segment_classical(
            slide, demo_slide["mask"], demo_slide["model"], params=params, workers=2, progress=False
        )
    pd.testing.assert_frame_equal(one, two)


def test_an_interrupted_run_resumes_from_its_checkpoint(
    demo_slide: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = ClassicalParams(tile_um=128.0, batch_tiles=2)
    checkpoint = tmp_path / "cells.parquet.segment-parts"
    real = segment._segment_tiles
    calls = {"n": 0}

    def failing(*args: object, **kwargs: object) -> pd.DataFrame:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with open_slide(demo_slide["path"]) as slide:
        monkeypatch.setattr(segment, "_segment_tiles", failing)
        with pytest.raises(KeyboardInterrupt):
            segment_classical(
                slide, demo_slide["mask"], demo_slide["model"], params=params, checkpoint=checkpoint
            )
        assert len(list(checkpoint.glob("batch-*.parquet"))) == 2
        monkeypatch.setattr(segment, "_segment_tiles", real)
        counted = {"n": 0}

        def counting(*args: object, **kwargs: object) -> pd.DataFrame:
            counted["n"] += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(segment, "_segment_tiles", counting)
        resumed = segment_classical(
            slide, demo_slide["mask"], demo_slide["model"], params=params, checkpoint=checkpoint
        )
        monkeypatch.setattr(segment, "_segment_tiles", real)
        fresh = segment_classical(
            slide, demo_slide["mask"], demo_slide["model"], params=params, progress=False
        )
    n_batches = -(-len(segment.tissue_tiles(slide, demo_slide["mask"], params)) // params.batch_tiles)
    assert counted["n"] == n_batches - 2
    pd.testing.assert_frame_equal(resumed, fresh)
    assert not checkpoint.exists()
