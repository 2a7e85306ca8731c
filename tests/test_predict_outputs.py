"""Per-slide prediction outputs (issue 16): spots.h5ad for scanpy, cells.h5ad, bulk.tsv, QuPath GeoJSON,
heat maps; on a slide, its spots and its segmented cells from the embedded demo (HEST layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import geopandas as gpd
import matplotlib
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from matplotlib.image import AxesImage
from PIL import Image

from bitro.io import read_sample
from bitro.io.sample import Sample
from bitro.io.thumbnails import VisiumImages, slide_image, visium_images
from bitro.model.pseudocells import pseudo_cells
from bitro.predict import (
    bulk_table,
    cells_anndata,
    heatmap_name,
    read_bulk_table,
    slide_profile,
    unit_amounts,
    write_bulk_table,
    write_cells,
    write_cells_qupath,
    write_heatmaps,
    write_slide_outputs,
    write_spots,
)
from bitro.preprocess.cells import cells_table
from bitro.preprocess.units import spot_units

matplotlib.use("Agg")

SAMPLE = "DEMO01"
MODEL = {"bundle": "demo_st/final", "encoder": "efficientnet_b0", "cv_pcc": [0.5, 0.25], "note": None}


@dataclass
class Slide:
    """One demo section with a stand-in prediction: its spots, cells, and eq. 10 pseudo-cells."""

    sample: Sample
    units: pd.DataFrame
    cells: pd.DataFrame
    genes: list[str]
    prediction: np.ndarray  # units × genes, counts
    pseudo: np.ndarray  # cells × genes, counts
    images: VisiumImages


@pytest.fixture(scope="module")
def slide(small_demo: tuple[Path, dict]) -> Slide:
    root, _ = small_demo
    sample = read_sample("hest", root / "hest", SAMPLE)
    units = spot_units(sample)
    with sample.open_slide() as opened:
        dimensions = opened.dimensions
    assert sample.cells is not None
    table = cells_table(
        sample.cells,
        mpp=sample.mpp,
        units=units,
        source="hest-cellvit",
        slide_dimensions=dimensions,
        path=sample.slide_path,
    )
    # Spot 3 is left without cells: a unit the model cannot predict (NaN row).
    cells = table[(table["unit_id"] >= 0) & (table["unit_id"] != 3)].reset_index(drop=True)
    counts = sample.expression.X
    counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float64)
    rng = np.random.default_rng(0)
    prediction = counts * rng.lognormal(0.0, 0.2, size=counts.shape) + 0.5
    prediction[3] = np.nan
    # Attention of each spot's cells sums to 1 per gene (softmax within the bag), as the model's does.
    unit = cells["unit_id"].to_numpy()
    logits = torch.as_tensor(rng.normal(size=(len(cells), counts.shape[1])))
    weights = torch.exp(logits)
    totals = torch.zeros(len(units), counts.shape[1], dtype=weights.dtype).index_add_(
        0, torch.as_tensor(unit), weights
    )
    attention = weights / totals[unit]
    pseudo = pseudo_cells(attention, torch.as_tensor(np.nan_to_num(prediction)), torch.as_tensor(unit))
    images = visium_images(sample.slide_path, hires_size=800, lowres_size=300)
    return Slide(
        sample=sample,
        units=units,
        cells=cells,
        genes=sample.expression.var_names.astype(str).tolist(),
        prediction=prediction,
        pseudo=pseudo.numpy(),
        images=images,
    )


def _spots(slide: Slide, path: Path, **options: object) -> ad.AnnData:
    settings = {
        "sample_id": SAMPLE,
        "slide": slide.images,
        "mpp": slide.sample.mpp,
        "space": "counts",
        "trained_level": "spot",
        "model": MODEL,
    }
    return write_spots(path, slide.prediction, slide.genes, slide.units, **(settings | options))


# ------------------------------------------------------------------------------------------- images


def test_visium_images_scale_level0_pixels_onto_the_thumbnails(slide: Slide) -> None:
    with slide.sample.open_slide() as opened:
        width, height = opened.dimensions
    hires, lowres = slide.images.hires, slide.images.lowres
    assert hires.pixels.shape == (800, 800, 3) and hires.pixels.dtype == np.uint8
    assert lowres.pixels.shape == (300, 300, 3)
    assert hires.scale == pytest.approx(800 / width) and lowres.scale == pytest.approx(300 / height)
    assert hires.extent == pytest.approx((0.0, width, height, 0.0))
    whole = slide_image(slide.sample.slide_path, max_size=5000)  # never enlarged
    assert whole.scale == 1.0 and whole.pixels.shape[:2] == (height, width)


# ------------------------------------------------------------------------------------------- spots


def _sorted(xy: np.ndarray) -> np.ndarray:
    return xy[np.lexsort((np.round(xy[:, 0]), np.round(xy[:, 1])))]


def test_scanpy_draws_spots_h5ad_over_its_he_with_no_extra_arguments(slide: Slide, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    import scanpy as sc

    _spots(slide, tmp_path / "spots.h5ad")
    adata = ad.read_h5ad(tmp_path / "spots.h5ad")
    gene = slide.genes[0]
    try:
        axes = sc.pl.spatial(adata, color=gene, show=False)
        ax = axes[0]
        images = [artist for artist in ax.get_children() if isinstance(artist, AxesImage)]
        assert len(images) == 1
        np.testing.assert_array_equal(np.asarray(images[0].get_array()), slide.images.hires.pixels)
        (circles,) = ax.collections
        centres = np.array([path.get_extents().get_points().mean(axis=0) for path in circles.get_paths()])
        radii = np.array([np.ptp(path.vertices[:, 0]) / 2 for path in circles.get_paths()])
    finally:
        plt.close("all")
    scale = slide.images.hires.scale
    expected = slide.units[["x_px", "y_px"]].to_numpy() * scale
    assert len(centres) == len(slide.units)  # scanpy draws them sorted by value: compare as sets
    np.testing.assert_allclose(_sorted(centres), _sorted(expected), atol=0.5)
    diameter_px = slide.sample.spot_diameter_um / slide.sample.mpp
    np.testing.assert_allclose(radii, diameter_px * scale / 2, rtol=1e-3)


def test_spots_h5ad_records_values_space_level_and_model(slide: Slide, tmp_path: Path) -> None:
    _spots(slide, tmp_path / "spots.h5ad")
    adata = ad.read_h5ad(tmp_path / "spots.h5ad")
    np.testing.assert_array_equal(adata.X, slide.prediction.astype(np.float32))
    assert adata.var_names.tolist() == slide.genes
    assert adata.obs_names.tolist() == slide.units["barcode"].tolist()
    np.testing.assert_array_equal(adata.obsm["spatial"], slide.units[["x_px", "y_px"]].to_numpy())
    factors = adata.uns["spatial"][SAMPLE]["scalefactors"]
    assert set(factors) == {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"}
    assert factors["spot_diameter_fullres"] == pytest.approx(55.0 / 0.5)
    assert factors["tissue_lowres_scalef"] == pytest.approx(slide.images.lowres.scale)
    assert set(adata.uns["spatial"][SAMPLE]["images"]) == {"hires", "lowres"}
    record = adata.uns["bitro"]
    assert (record["space"], record["trained_level"], record["unit"]) == ("counts", "spot", "spot")
    assert record["model"]["bundle"] == "demo_st/final" and "note" not in record["model"]
    np.testing.assert_array_equal(record["model"]["cv_pcc"], [0.5, 0.25])


def test_spots_of_a_bulk_model_are_marked_as_its_patches(slide: Slide, tmp_path: Path) -> None:
    patches = slide.units.assign(shape=pd.Categorical(["square"] * len(slide.units)), barcode="")
    adata = write_spots(
        tmp_path / "spots.h5ad",
        slide.prediction,
        slide.genes,
        patches,
        sample_id=SAMPLE,
        slide=slide.images,
        mpp=slide.sample.mpp,
        space="tpm",
        trained_level="bulk",
    )
    assert (adata.uns["bitro"]["trained_level"], adata.uns["bitro"]["unit"]) == ("bulk", "patch")
    assert adata.obs_names.tolist() == slide.units["unit_id"].astype(str).tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": "log1p"}, "space must be one of"),
        ({"trained_level": "xenium"}, "trained_level must be one of"),
        ({"model": {"bad": object()}}, "model.bad is a object"),
        ({"model": {"pcc": float("nan")}}, "only finite numbers"),
    ],
)
def test_spots_refuse_what_cannot_be_recorded(
    slide: Slide, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _spots(slide, tmp_path / "spots.h5ad", **change)
    assert not list(tmp_path.iterdir())


def test_spots_refuse_log_values(slide: Slide, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative values"):
        write_spots(
            tmp_path / "spots.h5ad",
            np.log(slide.prediction + 0.01) - 1.0,
            slide.genes,
            slide.units,
            sample_id=SAMPLE,
            slide=slide.images,
            mpp=0.5,
            space="counts",
            trained_level="spot",
        )


# ------------------------------------------------------------------------------------------- cells


def test_cells_h5ad_holds_the_pseudo_cells_at_their_centroids(slide: Slide, tmp_path: Path) -> None:
    write_cells(
        tmp_path / "cells.h5ad",
        slide.pseudo,
        slide.genes,
        slide.cells,
        sample_id=SAMPLE,
        space="counts",
        trained_level="spot",
        model=MODEL,
        phenotype=np.arange(len(slide.cells)) % 3,
        slide=slide.images,
        mpp=slide.sample.mpp,
    )
    adata = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.n_obs == len(slide.cells) and adata.var_names.tolist() == slide.genes
    assert adata.obs["cell_id"].tolist() == slide.cells["cell_id"].astype(str).tolist()
    np.testing.assert_array_equal(adata.obsm["spatial"], slide.cells[["x_px", "y_px"]].to_numpy())
    assert adata.uns["bitro"]["unit"] == "cell" and adata.uns["bitro"]["trained_level"] == "spot"
    # eq. 10: a spot's pseudo-cells add up to the spot's prediction.
    sums = pd.DataFrame(np.asarray(adata.X, np.float64)).groupby(adata.obs["unit_id"].to_numpy()).sum()
    np.testing.assert_allclose(sums.to_numpy(), slide.prediction[sums.index], rtol=1e-5)
    diameter = adata.uns["spatial"][SAMPLE]["scalefactors"]["spot_diameter_fullres"]
    assert 2.0 < diameter * slide.sample.mpp < 20.0  # a nucleus, in µm


def test_cells_h5ad_without_a_slide_has_no_images(slide: Slide) -> None:
    adata = cells_anndata(
        slide.pseudo, slide.genes, slide.cells, sample_id=SAMPLE, space="tpm", trained_level="bulk"
    )
    assert "spatial" not in adata.uns and adata.uns["bitro"]["space"] == "tpm"


# -------------------------------------------------------------------------------------------- bulk


def test_pseudo_bulk_row_is_the_sum_of_the_predicted_spots(slide: Slide, tmp_path: Path) -> None:
    profile, n = slide_profile(slide.prediction, trained_level="spot")
    predicted = [i for i in range(len(slide.prediction)) if i != 3]
    by_hand = np.zeros(len(slide.genes))
    for i in predicted:
        by_hand += slide.prediction[i].astype(np.float32).astype(np.float64)
    assert n == len(predicted)
    np.testing.assert_allclose(profile, by_hand, rtol=1e-12)
    mean, _ = slide_profile(slide.prediction, trained_level="spot", how="mean")
    np.testing.assert_allclose(mean, by_hand / n, rtol=1e-12)
    row, one = slide_profile(slide.prediction[:1], trained_level="bulk")
    assert one == 1 and np.array_equal(row, slide.prediction[0].astype(np.float32))
    with pytest.raises(ValueError, match="one row per slide"):
        slide_profile(slide.prediction, trained_level="bulk")
    table = bulk_table(
        {SAMPLE: profile, "OTHER": mean},
        slide.genes,
        space="counts",
        trained_level="spot",
        n_units={SAMPLE: n},
    )
    write_bulk_table(table, tmp_path / "bulk.tsv")
    back = read_bulk_table(tmp_path / "bulk.tsv")
    assert back.columns.tolist() == ["sample_id", "space", "trained_level", "n_units", *slide.genes]
    assert back["sample_id"].tolist() == [SAMPLE, "OTHER"] and back["n_units"].tolist() == [n, 1]
    np.testing.assert_allclose(back.loc[0, slide.genes].to_numpy(np.float64), by_hand, rtol=1e-8)


# ---------------------------------------------------------------------------------------- QuPath


def test_cells_geojson_loads_in_geopandas_with_qupath_measurements(slide: Slide, tmp_path: Path) -> None:
    chosen = slide.genes[:3]
    cells = slide.cells.copy()
    cells.loc[0, "geometry"] = None  # no outline: a point at the centroid
    pseudo = slide.pseudo.copy()
    pseudo[1, 1] = np.nan  # an unknown value is left out, not written as NaN
    path = write_cells_qupath(
        tmp_path / "cells.geojson", pseudo, slide.genes, cells, chosen=chosen, space="counts"
    )
    frame = gpd.read_file(path)
    assert len(frame) == len(cells)
    assert frame.geometry.is_valid.all() and not frame.geometry.is_empty.any()
    assert frame.geometry.iloc[0].geom_type == "Point" and frame.geometry.iloc[2].geom_type == "Polygon"
    assert shapely.equals_exact(
        frame.geometry.iloc[2], shapely.from_wkb(cells["geometry"].iloc[2]), tolerance=1e-6
    )
    features = json.loads(path.read_text())["features"]
    assert {f["properties"]["objectType"] for f in features} == {"cell"}
    names = [f"BiTro counts: {gene}" for gene in chosen]
    for k in (0, 2, len(features) - 1):
        measurements = features[k]["properties"]["measurements"]
        assert list(measurements) == names
        # float32 values, written in their shortest decimal form
        written = np.array(list(measurements.values()), dtype=np.float32)
        np.testing.assert_array_equal(written, pseudo[k, :3].astype(np.float32))
    assert list(features[1]["properties"]["measurements"]) == [names[0], names[2]]
    assert features[2]["properties"]["cell_id"] == int(cells["cell_id"].iloc[2])
    classes = cells["class"].astype(object).to_numpy()
    if pd.notna(classes[2]):
        assert features[2]["properties"]["classification"]["name"] == classes[2]


def test_cells_geojson_refuses_genes_it_did_not_predict(slide: Slide, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the predicted genes"):
        write_cells_qupath(
            tmp_path / "c.geojson", slide.pseudo, slide.genes, slide.cells, chosen=["NOPE"], space="tpm"
        )


# -------------------------------------------------------------------------------------- atomicity


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(
    slide: Slide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spots, geojson = tmp_path / "spots.h5ad", tmp_path / "cells.geojson"
    spots.write_text("previous")
    geojson.write_text("previous")

    def half_h5ad(self: ad.AnnData, filename: Path, **_: object) -> None:
        Path(filename).write_bytes(b"\x89HDF\r\n")
        raise OSError("disk full")

    def full_disk(*_: object, **__: object) -> None:  # the GeoJSON's head is written, then this fails
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_h5ad)
    with pytest.raises(OSError, match="disk full"):
        _spots(slide, spots)
    monkeypatch.setattr("bitro.io.cells._feature", full_disk)
    with pytest.raises(OSError, match="disk full"):
        write_cells_qupath(
            geojson, slide.pseudo, slide.genes, slide.cells, chosen=slide.genes[:1], space="counts"
        )
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.geojson", "spots.h5ad"]
    assert spots.read_text() == "previous" and geojson.read_text() == "previous"


# -------------------------------------------------------------------------------------------- maps


def pink_fraction(pixels: np.ndarray) -> float:
    """Fraction of light pink pixels (eosin): bright red and blue over green; none in viridis or white."""
    rgb = np.asarray(pixels, dtype=np.int16)
    pink = (rgb[..., 0] > 150) & (rgb[..., 2] > 110) & (rgb[..., 0] - rgb[..., 1] > 30)
    return float(pink.mean())


def test_heat_maps_draw_each_chosen_gene_over_the_he(slide: Slide, tmp_path: Path) -> None:
    chosen = [slide.genes[0], slide.genes[5]]
    written = write_heatmaps(
        tmp_path / "maps",
        slide.prediction,
        slide.genes,
        slide.units[["x_px", "y_px"]].to_numpy(),
        slide=slide.sample.slide_path,
        chosen=chosen,
        space="counts",
        sample_id=SAMPLE,
        diameter_px=110.0,
        dpi=60,
    )
    assert list(written) == chosen
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(heatmap_name(g) for g in chosen)
    for path in written.values():
        with Image.open(path) as png:
            assert png.format == "PNG"
            pixels = np.asarray(png.convert("RGB"), dtype=np.int16)
        assert pink_fraction(pixels) > 0.1  # the H&E shows between the spots
    assert heatmap_name("HLA-A/B") == "HLA-A_B.png"


# ------------------------------------------------------------------------------------- one slide


@pytest.mark.parametrize("level", ["spot", "bulk"])
def test_write_slide_outputs_writes_every_file_of_a_slide(slide: Slide, tmp_path: Path, level: str) -> None:
    cell_unit = slide.cells["unit_id"].to_numpy()
    if level == "bulk":  # a bulk model's slide profile, its patches the sums of their pseudo-cells (eq. 10)
        whole = slide.pseudo.sum(axis=0)
        units = unit_amounts(slide.pseudo, cell_unit, len(slide.units))
        space = "tpm"
    else:
        whole, units, space = None, slide.prediction, "counts"
    chosen = slide.genes[:2]
    written = write_slide_outputs(
        tmp_path / SAMPLE,
        sample_id=SAMPLE,
        genes=slide.genes,
        units=slide.units,
        unit_prediction=units,
        cells=slide.cells,
        pseudo_cells=slide.pseudo,
        slide=slide.sample.slide_path,
        mpp=slide.sample.mpp,
        space=space,
        trained_level=level,
        chosen=chosen,
        model=MODEL,
        slide_prediction=whole,
        dpi=50,
    )
    folder = tmp_path / SAMPLE
    assert sorted(p.name for p in folder.iterdir()) == ["cells.geojson", "cells.h5ad", "maps", "spots.h5ad"]
    assert sorted(p.name for p in (folder / "maps").iterdir()) == sorted(heatmap_name(g) for g in chosen)
    assert set(written.files.values()) == {
        folder / "spots.h5ad",
        folder / "cells.h5ad",
        folder / "cells.geojson",
    }
    spots = ad.read_h5ad(folder / "spots.h5ad")
    cells = ad.read_h5ad(folder / "cells.h5ad")
    for adata in (spots, cells):
        assert (adata.uns["bitro"]["trained_level"], adata.uns["bitro"]["space"]) == (level, space)
        metadata = adata.uns["spatial"][SAMPLE]["metadata"]
        assert metadata["source_image_path"] == str(slide.sample.slide_path)
    without_cells = ~np.isin(np.arange(len(slide.units)), cell_unit)
    assert without_cells[3]
    if level == "bulk":  # units without cells are not predicted
        np.testing.assert_array_equal(np.isnan(spots.X).all(axis=1), without_cells)
        assert written.n_units == 1
        np.testing.assert_allclose(written.profile, whole.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(np.nansum(spots.X, axis=0), whole, rtol=1e-4)
    else:
        expected, n = slide_profile(slide.prediction, trained_level="spot")
        assert written.n_units == n == len(slide.units) - 1
        np.testing.assert_array_equal(written.profile, expected)


def test_unit_amounts_sum_each_units_cells() -> None:
    profiles = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    totals = unit_amounts(profiles, np.array([0, 2, 0, -1]), 3)
    np.testing.assert_array_equal(totals[[0, 2]], [[6.0, 8.0], [3.0, 4.0]])
    assert np.isnan(totals[1]).all()
    with pytest.raises(ValueError, match="beyond the 3"):
        unit_amounts(profiles, np.array([0, 3, 0, 0]), 3)
