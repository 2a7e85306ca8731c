"""Cell crops: pixel sizes, pyramid levels, edges, stain normalisation, resume (docs/pitfalls.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bitro.preprocess.crops as crops_module
from bitro.errors import InputError
from bitro.io import open_slide
from bitro.preprocess.crops import CropParams, CropReader, read_crops, write_crops
from bitro.preprocess.regions import read_at_mpp
from bitro.preprocess.stain import StainNormalizer, fit_stain_model


def block_mean(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[0] // k, image.shape[1] // k
    blocks = image[: h * k, : w * k].reshape(h, k, w, k, 3).astype(np.float64)
    return np.clip(np.rint(blocks.mean(axis=(1, 3))), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def demo_tile(small_demo: tuple[Path, dict]) -> np.ndarray:
    root, _ = small_demo
    with open_slide(root / "hest" / "wsis" / "DEMO01.tif") as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)


def test_read_at_mpp_matches_an_independent_resampling(write_slide, tmp_path: Path, demo_tile) -> None:
    path = write_slide(
        tmp_path / "s.tif", demo_tile[:512, :512], mpp=0.25, downsamples=(1,), compression=None
    )
    with open_slide(path) as slide:
        # Integer ratio on an aligned origin: exact 2 × 2 block means.
        assert np.array_equal(
            read_at_mpp(slide, (10, 20, 100, 80), 0.5), block_mean(demo_tile, 2)[20:100, 10:110]
        )
        # Any other ratio: area averaging of the covered source window, as PIL's box filter does it.
        got = read_at_mpp(slide, (0, 0, 100, 100), 0.8)
        ref = np.asarray(
            Image.fromarray(demo_tile[:320, :320]).resize(
                (100, 100), Image.Resampling.BOX, box=(0, 0, 320, 320)
            )
        )
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_crops_of_a_scan_and_its_downsample_match(write_slide, tmp_path: Path, demo_tile) -> None:
    """A 0.25 µm/px scan and its 0.5 µm/px downsample give the same 0.5 µm/px crops."""
    fine = np.repeat(np.repeat(demo_tile[:400, :400], 2, axis=0), 2, axis=1)  # 800² at 0.25 µm/px
    fine_path = write_slide(tmp_path / "fine.tif", fine, mpp=0.25, downsamples=(1,), compression=None)
    coarse_path = write_slide(
        tmp_path / "coarse.tif", block_mean(fine, 2), mpp=0.5, downsamples=(1,), compression=None
    )
    rng = np.random.default_rng(0)
    xy_um = rng.uniform(0, 200, size=(300, 2))
    params = CropParams(size=48, mpp=0.5, tile=64)
    with open_slide(fine_path) as fine_slide, open_slide(coarse_path) as coarse_slide:
        a = CropReader(fine_slide, params).crops(xy_um[:, 0] / 0.25, xy_um[:, 1] / 0.25)
        b = CropReader(coarse_slide, params).crops(xy_um[:, 0] / 0.5, xy_um[:, 1] / 0.5)
    assert a.shape == (300, 48, 48, 3)
    assert np.array_equal(a, b)


def test_crops_come_from_the_pyramid_level_nearest_the_target(write_slide, tmp_path: Path, demo_tile) -> None:
    """On a 0.125 µm/px pyramid with a 4× level, 0.5 µm/px crops are read from that level."""
    image = np.repeat(np.repeat(demo_tile[:256, :256], 4, axis=0), 4, axis=1)
    path = write_slide(tmp_path / "pyr.tif", image, mpp=0.125, downsamples=(1, 4), compression=None)
    xy = np.array([[100.0, 100.0], [900.0, 500.0], [1020.0, 1020.0]]) * 1.0  # level-0 px
    with open_slide(path) as slide:
        assert slide.best_level_for_downsample(4.0) == 1
        got = CropReader(slide, CropParams(size=16, mpp=0.5, tile=32)).crops(xy[:, 0], xy[:, 1])
    expected = demo_tile[:256, :256]
    for crop, (x, y) in zip(got, xy / 4.0, strict=True):
        x0, y0 = int(np.floor(x - 8 + 0.5)), int(np.floor(y - 8 + 0.5))
        window = np.full((16, 16, 3), 255, np.uint8)
        sub = expected[max(y0, 0) : y0 + 16, max(x0, 0) : x0 + 16]
        window[max(-y0, 0) : max(-y0, 0) + sub.shape[0], max(-x0, 0) : max(-x0, 0) + sub.shape[1]] = sub
        assert np.array_equal(crop, window)


def test_no_crop_inside_the_slide_is_blank_and_edge_crops_are_padded_white(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    from bitro.io import read_sample

    root, _ = small_demo
    sample = read_sample("hest", root / "hest", "DEMO01")
    cells = sample.cells
    assert cells is not None
    with sample.open_slide() as slide:
        width, height = slide.dimensions
        x = np.concatenate([cells["x_px"].to_numpy(), [2.0, width - 3.0]])
        y = np.concatenate([cells["y_px"].to_numpy(), [height / 2, height - 2.0]])
        model = fit_stain_model(slide.read_region((0, 0), 0, slide.dimensions), method="vahadane")
        normalizer = StainNormalizer(model, model)
        out = write_crops(
            slide,
            x,
            y,
            tmp_path / "crops.zarr",
            params=CropParams(chunk=512),
            normalizer=normalizer,
            progress=False,
        )
    array = read_crops(out)
    assert array.shape == (len(x), 48, 48, 3) and array.attrs["mpp"] == 0.5
    values = array[:]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    flat = values.reshape(len(x), -1, 3)
    assert np.all(flat[inside].std(axis=1).sum(axis=1) > 5), "a crop of a cell inside the slide is blank"
    black = (flat < 20).all(axis=2).mean(axis=1)
    assert black.max() < 0.05, "crops must never be padded with black"
    left, corner = values[-2], values[-1]
    assert (left[:, :20] >= 250).all() and (corner[26:, :] >= 250).all() and (corner[:, 27:] >= 250).all()


def test_stain_normalisation_is_applied_per_pixel_to_the_crops(small_demo: tuple[Path, dict]) -> None:
    root, _ = small_demo
    with open_slide(root / "hest" / "wsis" / "DEMO02.tif") as slide:
        pixels = slide.read_region((0, 0), 0, slide.dimensions)
        source = fit_stain_model(pixels, method="macenko")
        target = fit_stain_model(pixels[::-1] * np.array([0.9, 1.0, 1.0]), method="macenko")
        normalizer = StainNormalizer(source, target)
        xy = np.array([[300.0, 300.0], [800.0, 650.0]])
        raw = CropReader(slide, CropParams()).crops(xy[:, 0], xy[:, 1])
        normalised = CropReader(slide, CropParams(), normalizer).crops(xy[:, 0], xy[:, 1])
    assert np.array_equal(normalised, normalizer(raw))
    assert not np.array_equal(normalised, raw)


def test_an_interrupted_crop_run_resumes(
    small_demo: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = small_demo
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1200, 2000), rng.uniform(0, 1200, 2000)
    params = CropParams(chunk=256)
    out = tmp_path / "crops.zarr"
    real = CropReader.crops
    calls = {"n": 0}

    def failing(self: CropReader, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, xs, ys)

    with open_slide(root / "hest" / "wsis" / "DEMO02.tif") as slide:
        monkeypatch.setattr(CropReader, "crops", failing)
        with pytest.raises(KeyboardInterrupt):
            write_crops(slide, x, y, out, params=params, progress=False)
        assert not out.exists()
        with pytest.raises(InputError, match="crops not found"):
            read_crops(out)
        monkeypatch.setattr(CropReader, "crops", real)
        done = []
        monkeypatch.setattr(crops_module, "iter_crop_chunks", _spy(crops_module.iter_crop_chunks, done))
        write_crops(slide, x, y, out, params=params, progress=False)
        resumed = read_crops(out)[:]
        fresh = CropReader(slide, params).crops(x, y)
    assert done == [[3, 4, 5, 6, 7]]
    assert np.array_equal(resumed, fresh)
    assert not out.with_name("crops.zarr.partial").exists()


def _spy(function, record: list):
    def wrapper(*args, chunks=None, **kwargs):
        record.append(list(chunks))
        return function(*args, chunks=chunks, **kwargs)

    return wrapper


def test_two_workers_write_the_same_crops(small_demo: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = small_demo
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 1200, 1500), rng.uniform(0, 1200, 1500)
    params = CropParams(chunk=300)
    with open_slide(root / "hest" / "wsis" / "DEMO02.tif") as slide:
        model = fit_stain_model(slide.read_region((0, 0), 0, (600, 600)), method="macenko")
        normalizer = StainNormalizer(model, model)
        one = write_crops(
            slide, x, y, tmp_path / "one.zarr", params=params, normalizer=normalizer, progress=False
        )
        two = write_crops(
            slide,
            x,
            y,
            tmp_path / "two.zarr",
            params=params,
            normalizer=normalizer,
            workers=2,
            progress=False,
        )
    assert np.array_equal(read_crops(one)[:], read_crops(two)[:])
