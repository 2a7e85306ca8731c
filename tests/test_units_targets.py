"""Tissue mask, units and targets on hand-made slides whose answers are known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from bitro.errors import InputError
from bitro.io.sample import Sample
from bitro.io.slides import open_slide
from bitro.preprocess.targets import assign_to_squares, make_targets, write_targets
from bitro.preprocess.tissue import tissue_mask
from bitro.preprocess.units import grid_units, make_units, read_units, spot_units, write_units

MPP = 0.5


@pytest.fixture
def tissue_slide(tmp_path: Path, write_slide: Callable[..., Path]) -> Path:
    """1024 × 768 px of glass with a pink-purple rectangle of tissue over x in [256, 768), y in [128, 640)."""
    rgb = np.full((768, 1024, 3), 245, dtype=np.uint8)
    rng = np.random.default_rng(0)
    tissue = np.array([190, 120, 180], dtype=np.int16) + rng.integers(-15, 15, size=(512, 512, 3))
    rgb[128:640, 256:768] = np.clip(tissue, 0, 255).astype(np.uint8)
    # Lossless, so the tissue edge sits exactly where it was painted.
    return write_slide(tmp_path / "slide.tif", rgb, mpp=MPP, compression="zlib")


def test_tissue_mask_finds_the_rectangle(tissue_slide: Path) -> None:
    with open_slide(tissue_slide) as slide:
        mask = tissue_mask(slide, mpp=4.0, min_object_um2=100.0)
    assert mask.mask.shape == (96, 128)  # 768 px * 0.5 µm / 4 µm, 1024 * 0.5 / 4
    truth = np.zeros_like(mask.mask)
    truth[16:80, 32:96] = True  # the rectangle at 4 µm/px
    # The edge may move by one mask pixel (the threshold sits nearer glass than Otsu's), no more.
    inner, outer = np.zeros_like(truth), np.zeros_like(truth)
    inner[17:79, 33:95] = True
    outer[15:81, 31:97] = True
    assert mask.mask[inner].all() and not mask.mask[~outer].any()
    assert (mask.mask == truth).mean() > 0.97


def test_fraction_in_boxes_matches_hand_count(tissue_slide: Path) -> None:
    with open_slide(tissue_slide) as slide:
        mask = tissue_mask(slide, mpp=4.0, min_object_um2=100.0)
    # A 128 px box straddling the left edge of tissue (x 192..320): half of it lies on tissue.
    fraction = mask.fraction_in_boxes(np.array([192.0, 300.0, 0.0]), np.array([300.0, 300.0, 0.0]), 128.0)
    assert fraction[0] == pytest.approx(0.5, abs=0.1)
    assert fraction[1] == pytest.approx(1.0, abs=0.02)
    assert fraction[2] == pytest.approx(0.0, abs=0.02)


def test_grid_units_tile_the_tissue(tissue_slide: Path) -> None:
    with open_slide(tissue_slide) as slide:
        mask = tissue_mask(slide, mpp=4.0, min_object_um2=100.0)
        units = grid_units(slide, size_um=32.0, mask=mask, min_tissue_fraction=0.5)
    side = 64  # 32 µm at 0.5 µm/px
    assert np.allclose((units["x_px"] - side / 2) % side, 0)
    assert np.allclose(units["x_um"], units["x_px"] * MPP)
    inside = units[units["in_tissue"]]
    # The tissue rectangle is 512 × 512 px = 8 × 8 patches of 64 px.
    assert len(inside) == 64
    assert inside["x_px"].min() - side / 2 == 256 and inside["y_px"].max() + side / 2 == 640
    assert (units["diameter_um"] == 32.0).all() and (units["shape"] == "square").all()


def st_sample(slide_path: Path, *, in_tissue: bool = True) -> Sample:
    """Four spots in shuffled barcode order, counts known by hand."""
    xy = np.array([[300.0, 200.0], [500.0, 400.0], [700.0, 600.0], [100.0, 100.0]])
    counts = sparse.csr_matrix(np.array([[1, 0, 3], [0, 2, 0], [5, 5, 5], [0, 0, 1]]))
    obs = pd.DataFrame(index=["AAC-1", "AAA-1", "AAB-1", "AAD-1"])
    if in_tissue:
        obs["in_tissue"] = [1, 1, 1, 0]
    expression = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=["EPCAM", "PTPRC", "COL1A1"]))
    expression.obsm["spatial"] = xy
    return Sample(
        sample_id="S1",
        kind="st",
        slide_path=slide_path,
        mpp=MPP,
        expression=expression,
        patient_id="P1",
        spot_diameter_um=55.0,
    )


def test_spot_units_follow_the_spots(tissue_slide: Path) -> None:
    units = spot_units(st_sample(tissue_slide))
    assert units["barcode"].tolist() == ["AAC-1", "AAA-1", "AAB-1", "AAD-1"]
    assert units["unit_id"].tolist() == [0, 1, 2, 3]
    assert units["in_tissue"].tolist() == [True, True, True, False]
    assert np.allclose(units[["x_um", "y_um"]].to_numpy(), [[150, 100], [250, 200], [350, 300], [50, 50]])
    assert (units["shape"] == "circle").all() and (units["diameter_um"] == 55.0).all()


def test_spot_units_without_in_tissue_use_the_mask(tissue_slide: Path) -> None:
    units = make_units(st_sample(tissue_slide, in_tissue=False), mask_mpp=4.0)
    # (300, 200) and (500, 400) lie in tissue; (700, 600) is 55 µm = 110 px wide, inside up to x 755;
    # (100, 100) is on glass.
    assert units["in_tissue"].tolist() == [True, True, True, False]


def test_spot_targets_align_by_barcode_not_row_order(tissue_slide: Path, tmp_path: Path) -> None:
    sample = st_sample(tissue_slide)
    units = spot_units(sample).iloc[[2, 0, 3, 1]].reset_index(drop=True)
    units["unit_id"] = np.arange(len(units))
    targets = make_targets(sample, units)
    dense = targets.X.toarray()
    assert dense.tolist() == [[5, 5, 5], [1, 0, 3], [0, 0, 1], [0, 2, 0]]
    assert targets.obs["barcode"].tolist() == ["AAB-1", "AAC-1", "AAD-1", "AAA-1"]
    assert np.allclose(targets.obsm["spatial"], units[["x_px", "y_px"]].to_numpy())
    assert targets.uns["bitro"]["space"] == "counts" and targets.uns["bitro"]["level"] == "st"
    write_targets(targets, tmp_path / "targets.h5ad")
    back = ad.read_h5ad(tmp_path / "targets.h5ad")
    assert back.var_names.tolist() == ["EPCAM", "PTPRC", "COL1A1"]
    assert (back.X.toarray() == dense).all()


def test_spot_targets_reject_units_of_another_sample(tissue_slide: Path) -> None:
    sample = st_sample(tissue_slide)
    units = spot_units(sample)
    units.loc[0, "barcode"] = "ZZZ-1"
    with pytest.raises(InputError, match="ZZZ-1"):
        make_targets(sample, units)


def test_pseudo_spot_targets_sum_cells_of_each_square(tissue_slide: Path) -> None:
    with open_slide(tissue_slide) as slide:
        mask = tissue_mask(slide, mpp=4.0, min_object_um2=100.0)
        units = grid_units(slide, size_um=32.0, mask=mask)
    rng = np.random.default_rng(1)
    xy = rng.uniform([256, 128], [768, 640], size=(500, 2))
    counts = rng.poisson(2.0, size=(500, 4))
    cells = ad.AnnData(X=sparse.csr_matrix(counts), var=pd.DataFrame(index=list("ABCD")))
    cells.obsm["spatial"] = xy
    sample = Sample("X1", "xenium", tissue_slide, MPP, cells, "X1")
    targets = make_targets(sample, units)
    # Hand computation: the square containing each cell from its corner at multiples of 64 px.
    expected = np.zeros((len(units), 4))
    corners = {(round(x - 32), round(y - 32)): i for i, (x, y) in enumerate(units[["x_px", "y_px"]].values)}
    for (x, y), row in zip(xy, counts, strict=True):
        expected[corners[(int(x // 64) * 64, int(y // 64) * 64)]] += row
    assert np.array_equal(targets.X.toarray(), expected)
    assert targets.obs["n_cells"].sum() == 500


def test_assign_to_squares_outside_is_minus_one(tissue_slide: Path) -> None:
    with open_slide(tissue_slide) as slide:
        mask = tissue_mask(slide, mpp=4.0, min_object_um2=100.0)
        units = grid_units(slide, size_um=32.0, mask=mask)
    where = assign_to_squares(
        np.array([[-5.0, 10.0], [5000.0, 10.0], [10.0, 10.0], [300.0, 300.0]]), units, mpp=MPP
    )
    assert where[:3].tolist() == [-1, -1, -1]
    hit = units.iloc[where[3]]
    assert abs(hit["x_px"] - 300) <= 32 and abs(hit["y_px"] - 300) <= 32


def test_units_round_trip_and_validation(tissue_slide: Path, tmp_path: Path) -> None:
    units = spot_units(st_sample(tissue_slide))
    write_units(units, tmp_path / "units.parquet")
    back = read_units(tmp_path / "units.parquet")
    pd.testing.assert_frame_equal(back, units, check_dtype=False, check_categorical=False)
    units.iloc[[1, 0]].to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r"bad\.parquet.*unit_id"):
        read_units(tmp_path / "bad.parquet")


def test_sample_units_are_the_spots_and_none_for_bulk(tissue_slide: Path) -> None:
    sample = st_sample(tissue_slide)
    spots = sample.units
    assert spots is not None
    assert spots["barcode"].tolist() == ["AAC-1", "AAA-1", "AAB-1", "AAD-1"]
    assert np.allclose(spots["x_um"], spots["x_px"] * MPP) and (spots["diameter_um"] == 55.0).all()
    bulk = Sample("B1", "bulk", tissue_slide, MPP, sample.expression[:1].copy(), "P1")
    assert bulk.units is None
    with pytest.raises(ValueError, match="not ST"):
        spot_units(bulk)
