"""The prediction-only ``slides`` layout: its paths, its sheet, reading a sample without expression, the
doctor's checks, the per-sample verbs on it (``targets`` refused), and the demo's unlabelled slide."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bitro import layout, options
from bitro.cli import main
from bitro.demo import DemoConfig, generate_demo
from bitro.demo.unlabelled import UNLABELLED_DIR, UNLABELLED_IDS, write_unlabelled_demo
from bitro.doctor import check_cohort, sheet_problems
from bitro.errors import ConfigError, InputError, MissingInputError, PixelSizeError
from bitro.io import read_sample, read_slides_cohort, read_slides_sample, read_slides_sheet

ROOT = Path(__file__).resolve().parents[1]

#: A demo small enough to write three times in a few seconds.
TINY = DemoConfig(
    seed=5,
    n_genes=40,
    n_hest_patients=1,
    hest_sections_per_patient=2,
    st_size_um=(300.0, 300.0),
    n_tcga_patients=1,
    tcga_two_slide_patients=0,
    bulk_size_um=(300.0, 300.0),
    n_xenium=1,
    xenium_size_um=(300.0, 300.0),
    xenium_panel_size=20,
    workers=1,
)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny demo with the unlabelled slide, without it, and the unlabelled slide alone."""
    out = {name: tmp_path_factory.mktemp(name) for name in ("with", "without", "alone")}
    generate_demo(out["with"], config=TINY, progress=False)
    generate_demo(out["without"], config=TINY, progress=False, unlabelled=False)
    write_unlabelled_demo(out["alone"], config=TINY)
    return out


@pytest.fixture
def slide_dir(tmp_path: Path, write_slide: Callable[..., Path], rgb_image: Callable[..., np.ndarray]) -> Path:
    """Slides: ``A.svs``-less ``A.tif`` (0.25 µm/px), ``B.TIFF`` without a pixel size, ``sub/c.tif``."""
    image = rgb_image(256, 256)
    write_slide(tmp_path / "A.tif", image, mpp=0.25)
    write_slide(tmp_path / "B.TIFF", image, mpp=None)
    (tmp_path / "sub").mkdir()
    write_slide(tmp_path / "sub" / "c.tif", image, mpp=0.5)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# options and layout
# --------------------------------------------------------------------------------------------------


def test_slides_is_a_format_that_measures_no_level() -> None:
    assert "slides" in options.FORMATS and options.PREDICTION_FORMATS == ("slides",)
    assert "slides" not in options.FORMAT_LEVELS
    assert set(options.FORMATS) == set(options.LABELLED_FORMATS) | set(options.PREDICTION_FORMATS)


def test_a_slides_sample_is_its_slide_by_name_any_case_or_the_sheets_file(slide_dir: Path) -> None:
    assert layout.slides_slide(slide_dir, "A") == slide_dir / "A.tif"
    assert layout.slides_slide(slide_dir, "B") == slide_dir / "B.TIFF"
    assert layout.slides_slide(slide_dir, "NOPE") == slide_dir / "NOPE.svs"  # absent: the first suffix
    files = layout.sample_files("slides", slide_dir, "c", file="sub/c.tif")
    assert files.slide == slide_dir / "sub" / "c.tif" and files.missing() == []
    assert files.paths() == {"slide": slide_dir / "sub" / "c.tif"}
    assert layout.slides_files(slide_dir, "NOPE").missing()[0].path == slide_dir / "NOPE.svs"
    with pytest.raises(ValueError, match="only for the slides layout"):
        layout.sample_files("hest", slide_dir, "A", file="A.tif")


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def test_a_slides_sample_has_no_expression_and_its_mpp_from_the_sheet_or_the_slide(slide_dir: Path) -> None:
    own = read_slides_sample(slide_dir, "A")
    assert own.kind == "unlabelled" and own.expression is None and not own.labelled
    assert own.mpp == pytest.approx(0.25) and own.patient_id == "A" and own.units is None
    given = read_sample("slides", slide_dir, "B", mpp=0.5)
    assert given.mpp == 0.5 and given.metadata["mpp_source"] == "sample sheet mpp"
    named = read_sample("slides", slide_dir, "c", file="sub/c.tif")
    assert named.slide_path == slide_dir / "sub" / "c.tif" and named.mpp == pytest.approx(0.5)
    with named.open_slide() as slide:
        assert slide.dimensions == (256, 256)


def test_a_slide_without_pixel_size_or_missing_is_named(slide_dir: Path) -> None:
    with pytest.raises(PixelSizeError, match="sample sheet's mpp column") as caught:
        read_slides_sample(slide_dir, "B")
    assert caught.value.path == str(slide_dir / "B.TIFF")
    with pytest.raises(MissingInputError, match="NOPE") as missing:
        read_slides_sample(slide_dir, "NOPE")
    assert missing.value.path == str(slide_dir / "NOPE.svs")
    with pytest.raises(ValueError, match="only for the slides layout"):
        read_sample("hest", slide_dir, "A", file="A.tif")


def test_the_sheet_gives_patient_mpp_and_file_and_its_problems_name_it(
    slide_dir: Path, tmp_path: Path
) -> None:
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample_id\tpatient_id\tmpp\tfile\nA\t\t\t\nB\tP2\t0.5\t\nC\tP3\t\tsub/c.tif\n")
    samples = read_slides_cohort(slide_dir, sheet)
    assert [(s.sample_id, s.patient_id, s.mpp) for s in samples] == [
        ("A", "A", 0.25),
        ("B", "P2", 0.5),
        ("C", "P3", 0.5),
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("sample_id\tmpp\nA\t-1\nA\t\n")
    with pytest.raises(InputError, match="duplicated sample_id") as caught:
        read_slides_sheet(bad)
    assert caught.value.path == str(bad) and "mpp '-1' is not a positive number" in str(caught.value)
    nosamples = tmp_path / "none.tsv"
    nosamples.write_text("slide\nA\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['sample_id'\]"):
        read_slides_sheet(nosamples)


# --------------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------------


def test_the_doctor_checks_a_slides_cohort_naming_each_file(slide_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample_id\tmpp\tfile\nA\t\t\nB\t\t\nC\t\tsub/c.tif\nD\t\t\nD\t\t\n")
    cohort = {"format": "slides", "root": str(slide_dir), "samples": str(sheet)}
    results = check_cohort("mine", cohort, {}, None)
    by = {(r.subject, r.status): r.message for r in results}
    assert "A.tif" in by[("mine/A", "ok")] and "no expression (prediction only)" in by[("mine/A", "ok")]
    assert by[("mine/B", "fail")].startswith(f"{slide_dir / 'B.TIFF'}: no pixel size")
    assert ("mine/C", "ok") in by
    assert "duplicated sample_id ['D']" in by[(str(sheet), "fail")]
    assert by[("mine/D", "fail")].startswith(f"{slide_dir / 'D.svs'}: whole-slide image not found")
    assert not [r for r in results if r.check == "cohort"]  # nothing to split
    assert sheet_problems(sheet, cohort, {}) == [f"{sheet}: duplicated sample_id ['D']"]


def test_a_precomputed_backend_has_nothing_to_read_in_the_slides_layout(
    slide_dir: Path, tmp_path: Path
) -> None:
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample_id\nA\n")
    cohort = {"format": "slides", "root": str(slide_dir), "samples": str(sheet)}
    results = check_cohort("c", cohort, {"segmentation": {"backend": "precomputed"}}, None)
    assert any(r.status == "fail" and "slides layout has no segmentation" in r.message for r in results)


# --------------------------------------------------------------------------------------------------
# the verbs
# --------------------------------------------------------------------------------------------------


def test_the_per_sample_verbs_run_on_a_slides_sample_and_targets_refuses_it(
    demos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = demos["with"] / UNLABELLED_DIR
    sample = ["--format", "slides", "--root", str(root), "--sample", UNLABELLED_IDS[0]]
    out = {name: tmp_path / name for name in ("tissue.npz", "units.parquet", "stain.json", "cells.parquet")}
    tissue = ["--tissue", str(out["tissue.npz"])]
    assert main(["tissue", *sample, "--out", str(out["tissue.npz"])]) == 0
    assert main(["units", *sample, *tissue, "--out", str(out["units.parquet"])]) == 0
    units = pd.read_parquet(out["units.parquet"])
    assert len(units) > 0 and set(units["shape"]) == {"square"} and (units["barcode"] == "").all()
    assert np.allclose(units["diameter_um"], 55.0)
    reference = ["--reference", str(ROOT / "resources" / "stain" / "reference.json"), "--method", "macenko"]
    assert main(["stain", *sample, *tissue, *reference, "--out", str(out["stain.json"])]) == 0
    segment = ["--units", str(out["units.parquet"]), "--stain", str(out["stain.json"])]
    assert main(["cells", *sample, *tissue, *segment, "--out", str(out["cells.parquet"])]) == 0
    cells = pd.read_parquet(out["cells.parquet"])
    assert len(cells) > 50
    crops = ["--cells", str(out["cells.parquet"]), "--size", "16", "--quiet"]
    assert main(["crops", *sample, *crops, "--out", str(tmp_path / "crops.zarr")]) == 0
    capsys.readouterr()
    targets = ["--units", str(out["units.parquet"]), "--out", str(tmp_path / "targets.h5ad")]
    assert main(["targets", *sample, *targets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitro targets: error: --format slides:") and "no targets" in err
    assert not (tmp_path / "targets.h5ad").exists()
    assert main(["units", "--format", "hest", "--root", str(root), "--sample", "X", "--slide-file", "a.tif",
                 "--out", str(tmp_path / "u.parquet")]) == 2  # fmt: skip
    assert "--slide-file: is for --format slides" in capsys.readouterr().err


def test_make_targets_refuses_an_unlabelled_sample(slide_dir: Path) -> None:
    from bitro.preprocess.targets import make_targets

    with pytest.raises(ConfigError, match="no targets"):
        make_targets(read_slides_sample(slide_dir, "A"), pd.DataFrame())


# --------------------------------------------------------------------------------------------------
# the demo's unlabelled slide
# --------------------------------------------------------------------------------------------------


def test_the_demo_writes_one_unlabelled_slide_read_by_the_real_reader_through_its_sheet(
    demos: dict[str, Path],
) -> None:
    root = demos["with"] / UNLABELLED_DIR
    sheet = ROOT / "config" / "samples" / "demo_slides.tsv"
    samples = read_slides_cohort(root, sheet)
    assert [s.sample_id for s in samples] == list(UNLABELLED_IDS)
    (sample,) = samples
    assert sample.mpp == pytest.approx(TINY.mpp) and sample.metadata["mpp_source"] == "openslide.mpp-x"
    with sample.open_slide() as slide:
        assert slide.dimensions == (600, 600) and slide.level_count >= 2  # one ST section: 300 µm at 0.5
    truth = root / "truth" / f"{sample.sample_id}_cells.h5ad"
    assert truth.is_file() and (root / "truth" / "params.json").is_file()
    assert sorted(p.name for p in root.iterdir()) == [f"{sample.sample_id}.tif", "truth"]


def test_the_unlabelled_slide_changes_no_other_demo_file_and_is_deterministic(demos: dict[str, Path]) -> None:
    with_slide, without = digests(demos["with"]), digests(demos["without"])
    assert {k: v for k, v in with_slide.items() if not k.startswith(f"{UNLABELLED_DIR}/")} == without
    alone = digests(demos["alone"])
    assert alone == {k: v for k, v in with_slide.items() if k.startswith(f"{UNLABELLED_DIR}/")}
    assert f"{UNLABELLED_DIR}/{UNLABELLED_IDS[0]}.tif" in alone
