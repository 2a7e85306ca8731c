"""The ``morphology_histomicstk`` encoder: HistomicsTK's nuclear features on crops and their nucleus masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from bitro.features.encoders import HistomicsTKMorphologyEncoder
from bitro.features.morphology import HandcraftedMorphology, histomicstk_features, outline_masks
from bitro.preprocess.crops import CropParams

SIZE = 48
YY, XX = np.mgrid[:SIZE, :SIZE]
HAEMATOXYLIN = (90, 60, 140)
BACKGROUND = (235, 200, 225)


def ellipse(a: float, b: float, theta: float = 0.0) -> np.ndarray:
    """Pixels of an ellipse with semi-axes a, b (px) centred in the crop, major axis at ``theta``."""
    x, y = XX - SIZE / 2 + 0.5, YY - SIZE / 2 + 0.5
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def painted(masks: list[np.ndarray], colour: tuple[int, int, int] = HAEMATOXYLIN) -> np.ndarray:
    crops = np.full((len(masks), SIZE, SIZE, 3), BACKGROUND, dtype=np.uint8)
    for crop, mask in zip(crops, masks, strict=True):
        crop[mask] = colour
    return crops


@pytest.fixture(scope="module")
def encoder() -> HistomicsTKMorphologyEncoder:
    return HistomicsTKMorphologyEncoder()


@pytest.mark.parametrize(("a", "b", "theta"), [(9.0, 5.0, 0.0), (12.0, 4.0, 0.7), (7.0, 7.0, 0.0)])
def test_a_synthetic_nucleus_has_its_area_and_eccentricity(
    encoder: HistomicsTKMorphologyEncoder, a: float, b: float, theta: float
) -> None:
    """Area πab and eccentricity √(1 − b²/a²) of a drawn ellipse, whatever its orientation."""
    mask = ellipse(a, b, theta)
    features = encoder.embed(painted([mask]), mask[None])[0]
    column = {name: i for i, name in enumerate(encoder.feature_names)}
    area = features[column["Nucleus.Size.Area"]]
    assert area == mask.sum()
    assert area == pytest.approx(np.pi * a * b, rel=0.03)
    assert features[column["Nucleus.Shape.Eccentricity"]] == pytest.approx(
        np.sqrt(1 - (b / a) ** 2), abs=0.03
    )
    assert features[column["Nucleus.Size.MajorAxisLength"]] == pytest.approx(2 * a, rel=0.05)
    assert features[column["Nucleus.Size.MinorAxisLength"]] == pytest.approx(2 * b, rel=0.06)


def test_darker_nuclei_measure_darker_and_cytoplasm_is_measured_around_them(
    encoder: HistomicsTKMorphologyEncoder,
) -> None:
    mask = ellipse(8, 6)
    dark, pale = painted([mask], HAEMATOXYLIN), painted([mask], (170, 150, 200))
    column = {name: i for i, name in enumerate(encoder.feature_names)}
    f_dark, f_pale = encoder.embed(dark, mask[None])[0], encoder.embed(pale, mask[None])[0]
    # HistomicsTK's haematoxylin channel is an intensity: the darker nucleus has the lower mean.
    assert f_dark[column["Nucleus.Intensity.Mean"]] < f_pale[column["Nucleus.Intensity.Mean"]]
    # The ring around the nucleus is uniform background: no spread in its eosin intensity.
    assert f_dark[column["Cytoplasm.Intensity.Std"]] == pytest.approx(0.0, abs=1e-6)
    assert any(n.startswith("Cytoplasm.Haralick.") for n in encoder.feature_names)


def test_a_batch_gives_each_crop_the_features_it_has_alone(encoder: HistomicsTKMorphologyEncoder) -> None:
    """Crops share one mosaic per batch: nothing of one crop may leak into its neighbours' features."""
    rng = np.random.default_rng(0)
    masks = [ellipse(rng.uniform(4, 12), rng.uniform(3, 6), rng.uniform(0, 3)) for _ in range(7)]
    crops = painted(masks)
    crops = np.clip(crops.astype(int) + rng.integers(-20, 20, size=crops.shape), 0, 255).astype(np.uint8)
    together = encoder.embed(crops, np.stack(masks))
    alone = np.concatenate([encoder.embed(crops[i : i + 1], masks[i][None]) for i in range(len(masks))])
    assert together.shape == (7, encoder.dim)
    assert np.allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_without_masks_the_nucleus_is_found_in_the_crop(encoder: HistomicsTKMorphologyEncoder) -> None:
    mask = ellipse(9, 5)
    with_mask = encoder.embed(painted([mask]), mask[None])
    found = encoder.embed(painted([mask]))
    assert np.allclose(with_mask, found)
    assert HandcraftedMorphology().embed(painted([mask]))[0, 0] == mask.sum()


def test_empty_masks_are_refused() -> None:
    with pytest.raises(ValueError, match="empty nucleus mask"):
        histomicstk_features(painted([ellipse(5, 5)]), np.zeros((1, SIZE, SIZE), bool))


def test_outlines_are_rasterised_where_the_crops_are_cut() -> None:
    """A circular outline of radius 3 µm around a cell, on a 0.25 µm/px slide, in a 0.5 µm/px crop."""
    slide_mpp, params = 0.25, CropParams(size=SIZE, mpp=0.5)
    x, y = 1000.4, 2000.6  # level-0 px
    circle = shapely.Point(x + 2.0, y - 4.0).buffer(12.0, quad_segs=32)  # centre 0.5 µm right, 1 µm up
    masks = outline_masks([x], [y], [shapely.to_wkb(circle)], slide_mpp=slide_mpp, params=params)
    assert masks.shape == (1, SIZE, SIZE)
    mask = masks[0]
    assert mask.sum() == pytest.approx(np.pi * 6.0**2, rel=0.08)  # radius 6 crop px
    rows, cols = np.nonzero(mask)
    # Crop pixel c's centre is at level-0 (origin + c + 0.5) * 2; the circle centre maps to 25.2, 21.3.
    origin = np.floor(np.array([x, y]) / 2 - SIZE / 2 + 0.5)
    centre = (np.array([x + 2.0, y - 4.0]) / 2) - origin - 0.5
    assert cols.mean() == pytest.approx(centre[0], abs=0.2) and rows.mean() == pytest.approx(
        centre[1], abs=0.2
    )
    none = outline_masks([x], [y], [None], slide_mpp=slide_mpp, params=params)
    assert not none.any()


def test_the_embed_verb_measures_each_nucleus_under_its_outline(
    small_demo: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bitro.cli import main
    from bitro.features.embeddings import read_embeddings
    from bitro.preprocess.cells import read_cells

    root, _ = small_demo
    sample = ["--format", "hest", "--root", root / "hest", "--sample", "DEMO02"]
    reference = Path(__file__).resolve().parents[1] / "resources" / "stain" / "reference.json"

    def run(*args: object) -> int:
        return main([str(a) for a in args])

    t = tmp_path
    assert run("tissue", *sample, "--out", t / "tissue.npz") == 0
    assert run("units", *sample, "--tissue", t / "tissue.npz", "--out", t / "units.parquet") == 0
    stain = ["--tissue", t / "tissue.npz", "--reference", reference, "--out", t / "stain.json"]
    assert run("stain", *sample, *stain) == 0
    cells = ["--tissue", t / "tissue.npz", "--units", t / "units.parquet", "--stain", t / "stain.json"]
    assert run("cells", *sample, *cells, "--out", t / "cells.parquet") == 0
    crops = ["--cells", t / "cells.parquet", "--stain", t / "stain.json", "--quiet"]
    assert run("crops", *sample, *crops, "--out", t / "crops.zarr") == 0
    embed = ["embed", "--mode", "crop", "--crops", t / "crops.zarr", "--encoder", "morphology_histomicstk"]
    embed.append("--quiet")
    assert run(*embed, "--cells", t / "cells.parquet", "--out", t / "embeddings.npy") == 0
    values, describe = read_embeddings(t / "embeddings.npy")
    assert describe["nucleus_masks"] == "outlines" and values.shape[1] == describe["dim"]
    table = read_cells(t / "cells.parquet")
    masks = outline_masks(table["x_px"], table["y_px"], table["geometry"], slide_mpp=0.5, params=CropParams())
    area = values[:, HistomicsTKMorphologyEncoder().feature_names.index("Nucleus.Size.Area")].astype(
        np.float64
    )
    has_outline = masks.reshape(len(masks), -1).any(axis=1)
    assert has_outline.mean() > 0.99
    assert np.allclose(area[has_outline], masks[has_outline].sum(axis=(1, 2)), rtol=2e-3)
    # Crops at 0.5 µm/px: the outline's pixels are its area in units of 0.25 µm².
    assert np.median(np.abs(area * 0.25 - table["area_um2"]) / table["area_um2"]) < 0.15

    other = t / "other_cells.parquet"
    table.iloc[:10].to_parquet(other)
    assert run(*embed, "--cells", other, "--out", t / "wrong.npy") == 2
    assert "other_cells.parquet" in capsys.readouterr().err
