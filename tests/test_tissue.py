"""Tissue mask: coverage of the true nuclei, GeoJSON outline, file round trip."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from skimage.filters import threshold_otsu

from bitro.errors import InputError
from bitro.io import open_slide
from bitro.preprocess.tissue import (
    _low_resolution_od,
    mask_polygons,
    read_tissue,
    tissue_geojson,
    tissue_mask,
    write_tissue,
)


@pytest.mark.parametrize("sid", ["DEMO01", "DEMO02"])
def test_mask_holds_the_true_nuclei_and_pale_stroma(small_demo: tuple[Path, dict], sid: str) -> None:
    """Otsu alone splits dense from sparse tissue on a section that fills the slide; the mask must not."""
    root, _ = small_demo
    with open_slide(root / "hest" / "wsis" / f"{sid}.tif") as slide:
        mask = tissue_mask(slide)
        od = _low_resolution_od(slide, mask.scale)
    truth = gpd.read_parquet(root / "hest" / "truth" / f"{sid}_cells.parquet").geometry.centroid
    rows = np.clip((truth.y.to_numpy() / mask.scale).astype(int), 0, mask.mask.shape[0] - 1)
    cols = np.clip((truth.x.to_numpy() / mask.scale).astype(int), 0, mask.mask.shape[1] - 1)
    assert mask.mask[rows, cols].mean() > 0.98
    assert mask.threshold_od < threshold_otsu(od)
    assert 0.3 < mask.mask.mean() < 0.95  # glass around the section stays out


def test_outline_geojson_has_the_mask_area_and_opens_as_annotations(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = small_demo
    with open_slide(root / "hest" / "wsis" / "DEMO01.tif") as slide:
        mask = tissue_mask(slide)
    outline = mask_polygons(mask)
    assert outline.is_valid
    assert outline.area == pytest.approx(mask.mask.sum() * mask.scale**2)
    write_tissue(mask, tmp_path / "tissue.npz", tmp_path / "tissue.geojson")
    data = json.loads((tmp_path / "tissue.geojson").read_text())
    shapes = [shapely.geometry.shape(f["geometry"]) for f in data["features"]]
    assert {f["properties"]["objectType"] for f in data["features"]} == {"annotation"}
    assert sum(s.area for s in shapes) == pytest.approx(outline.area, rel=1e-6)
    assert data == json.loads(json.dumps(tissue_geojson(mask)))
    back = read_tissue(tmp_path / "tissue.npz")
    assert np.array_equal(back.mask, mask.mask) and back.scale == mask.scale


def test_holes_are_kept_in_the_outline() -> None:
    from bitro.preprocess.tissue import TissueMask

    grid = np.zeros((40, 40), bool)
    grid[5:35, 5:35] = True
    grid[15:25, 15:25] = False
    outline = mask_polygons(TissueMask(grid, mpp=8.0, slide_mpp=0.5, threshold_od=0.1))
    assert len(outline.geoms) == 1 and len(outline.geoms[0].interiors) == 1
    assert outline.area == pytest.approx((900 - 100) * 16**2)


def test_a_slide_filled_with_tissue_is_all_tissue(write_slide, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([200, 140, 190], 12, size=(512, 512, 3)), 0, 255).astype(np.uint8)
    with open_slide(write_slide(tmp_path / "full.tif", pink, mpp=1.0, downsamples=(1,))) as slide:
        mask = tissue_mask(slide, mpp=8.0, min_object_um2=1.0)
    assert mask.mask.mean() > 0.99


def test_a_file_that_is_not_a_mask_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tissue.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(InputError, match=r"tissue\.npz"):
        read_tissue(bad)
