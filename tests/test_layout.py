"""bitro.layout: what a sample of each layout is read from, the output paths, fold and figure names."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitro import layout
from bitro.io import read_sample


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_a_hest_slide_is_the_first_suffix_found_and_tif_when_there_is_none(tmp_path: Path) -> None:
    assert layout.hest_slide(tmp_path, "S1") == tmp_path / "wsis" / "S1.tif"
    touch(tmp_path / "wsis" / "S1.ndpi")
    assert layout.hest_slide(tmp_path, "S1") == tmp_path / "wsis" / "S1.ndpi"
    touch(tmp_path / "wsis" / "S1.svs")
    assert layout.hest_files(tmp_path, "S1").slide == tmp_path / "wsis" / "S1.svs"
    touch(tmp_path / "wsis" / "S1.tif")
    files = layout.hest_files(tmp_path, "S1")
    assert files.paths()["slide"] == tmp_path / "wsis" / "S1.tif"
    assert [f.path.name for f in files.missing()] == ["S1.h5ad", "S1.json"]


def test_a_tcga_slide_is_found_by_its_barcode_in_any_case(tmp_path: Path) -> None:
    barcode = "TCGA-AB-1234-01Z-00-DX1"
    assert layout.tcga_slide(tmp_path, barcode).name == f"{barcode}.<uuid>.svs"
    touch(tmp_path / "slides" / f"{barcode.lower()}.abc.txt")
    touch(tmp_path / "slides" / f".{barcode}.abc.svs")
    slide = touch(tmp_path / "slides" / f"{barcode.lower()}.abc.SVS")
    assert layout.tcga_files(tmp_path, barcode).slide == slide


def test_a_xenium_bundle_is_the_sections_folder_or_the_root_itself(tmp_path: Path) -> None:
    assert layout.xenium_bundle(tmp_path, "S1") == tmp_path / "S1"  # absent: named as expected
    touch(tmp_path / "experiment.xenium")
    assert layout.xenium_bundle(tmp_path, "S1") == tmp_path
    (tmp_path / "S1").mkdir()
    assert layout.xenium_bundle(tmp_path, "S1") == tmp_path / "S1"


def test_a_run_prefixed_xenium_file_counts_only_when_it_is_the_one_match(tmp_path: Path) -> None:
    bundle = tmp_path / "S1"
    touch(bundle / "Run_A_he_image.ome.tif")
    files = layout.xenium_files(tmp_path, "S1")
    assert files.slide == bundle / "Run_A_he_image.ome.tif"
    assert {f.path.name for f in files.missing()} == {
        "experiment.xenium",
        "cells.parquet",
        "cell_feature_matrix.h5",
        "he_imagealignment.csv",
    }
    touch(bundle / "Run_B_he_image.ome.tif")
    assert layout.xenium_files(tmp_path, "S1").slide == bundle / "he_image.ome.tif"  # ambiguous


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="visium"):
        layout.sample_files("visium", tmp_path, "S1")


def test_every_demo_sample_has_the_files_its_layout_names_and_its_reader_reads_them(
    small_demo: tuple[Path, dict],
) -> None:
    """The demo writers and the readers agree with bitro.layout: nothing it names is missing."""
    root, summary = small_demo
    roots = {"hest": root / "hest", "tcga": root / "tcga", "xenium": root / "xenium"}
    for fmt, samples in summary["ids"].items():
        for sample in samples:
            files = layout.sample_files(fmt, roots[fmt], sample)
            assert files.missing() == [], (fmt, sample)
            assert read_sample(fmt, roots[fmt], sample).slide_path == files.slide


def test_output_paths_are_wildcard_patterns_or_names() -> None:
    assert str(layout.sample_dir()) == "results/{cohort}/samples/{sample}"
    assert layout.sample_dir("c", "s", Path("out")) == Path("out/c/samples/s")
    assert str(layout.transfer_fold_dir("a", "b", "fold2")) == "results/transfer/a_to_b/fold2"
    assert str(layout.transfer_pretrain_dir()) == "results/transfer/{source}_to_{target}/pretrain"
    assert str(layout.ablation_fold_dir("v", "c", "fold0")) == "results/ablations/v/c/fold0"
    assert layout.FoldFile.phenotypes("cohort") == "phenotypes_cohort.npz"


@pytest.mark.parametrize(
    ("level", "group_by", "expected"),
    [("bulk", "patient", 1), ("xenium", "patient", 4), ("st", "patient", 2), ("st", "sample", 3)],
)
def test_fold_count_follows_the_levels_protocol(level: str, group_by: str, expected: int) -> None:
    samples, patients = ["A", "B", "C"], ["P1", "P1", ""]  # C's empty patient id stands for itself
    count = layout.fold_count(level, samples, patients, group_by=group_by, bulk_folds=1, xenium_strips=4)
    assert count == expected
    assert layout.fold_names(count)[-1] == f"fold{expected - 1}"


def test_figure_names_per_level_and_their_kinds() -> None:
    st = layout.figure_names("st", ["fold0", "fold1"])
    assert st["spatial_fold1"] == "fold1_spatial.png" and not any(k.startswith("cells_") for k in st)
    bulk = layout.figure_names("bulk", ["fold0"])
    assert bulk["cells_fold0"] == "fold0_cells.png" and not any(k.startswith("spatial_") for k in bulk)
    assert set(layout.COHORT_FIGURES) <= set(bulk)
    assert layout.figure_kind("spatial_fold3") == ("spatial", "fold3")
    assert layout.figure_kind("pcc_genes") == ("pcc_genes", "all")
    with pytest.raises(ValueError, match="level"):
        layout.figure_names("spots", [])
