"""Tests for bitro.io.tcga."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from bitro.errors import InputError, MissingInputError
from bitro.io import read_sample
from bitro.io.tcga import (
    list_tcga_slides,
    parse_barcode,
    read_tcga_cohort,
    read_tcga_expression,
    read_tcga_slide,
)

SLIDES = {
    "TCGA-DM-A001-01Z-00-DX1": "1a2b3c4d-0000-0000-0000-000000000001",
    "TCGA-DM-A001-01Z-00-DX2": "1a2b3c4d-0000-0000-0000-000000000002",
    "TCGA-DM-A002-01Z-00-DX1": "1a2b3c4d-0000-0000-0000-000000000003",
}
ALIQUOTS = [
    "TCGA-DM-A001-01A-11R-A00Z-07",  # tumour of patient 1: both of its slides
    "TCGA-DM-A001-11A-11R-A00Z-07",  # normal of patient 1: no slide
    "TCGA-DM-A002-01A-21R-A00Z-07",
]
GENES = pd.DataFrame(
    {
        "gene_id": [
            "ENSG00000141510.17",
            "ENSG00000002586.20",
            "ENSG00000002586.20_PAR_Y",
            "ENSG00000111640.15",
        ],
        "gene_name": ["TP53", "CD99", "CD99", "GAPDH"],
        "gene_type": ["protein_coding"] * 4,
    }
)


def _tpm(n_genes: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    raw = rng.uniform(1, 100, (n_genes, len(ALIQUOTS)))
    return raw / raw.sum(axis=0) * 1e6


def _write_table(path, values, gene_ids=None, aliquots=None):
    frame = pd.DataFrame(values, columns=aliquots or ALIQUOTS)
    frame.insert(0, "gene_id", gene_ids or GENES["gene_id"].tolist())
    frame.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def cohort(tmp_path, write_slide, rgb_image):
    root = tmp_path / "tcga"
    (root / "slides").mkdir(parents=True)
    (root / "expression").mkdir()
    for i, (barcode, uuid) in enumerate(SLIDES.items()):
        suffix = "svs" if i == 0 else "tif"  # a TIFF named .svs: OpenSlide goes by content
        path = root / "slides" / f"{barcode}.{uuid}.{suffix}"
        write_slide(path, rgb_image(256, 256, seed=i), mpp=0.25 + 0.25 * i, downsamples=(1,))
    _write_table(root / "expression" / "tpm.tsv", _tpm())
    GENES.to_csv(root / "expression" / "gene_map.tsv", sep="\t", index=False)
    return root


def test_parse_barcode():
    slide = parse_barcode("TCGA-DM-A001-01Z-00-DX1")
    assert slide["patient"] == "TCGA-DM-A001"
    assert slide["sample"] == "TCGA-DM-A001-01"
    assert slide["sample_type"] == "01" and slide["vial"] == "Z" and slide["slide"] == "DX1"
    aliquot = parse_barcode("TCGA-DM-A001-01A-11R-A00Z-07")
    assert aliquot["sample"] == "TCGA-DM-A001-01"
    assert (aliquot["portion"], aliquot["analyte"], aliquot["plate"], aliquot["center"]) == (
        "11",
        "R",
        "A00Z",
        "07",
    )
    assert parse_barcode("TCGA-DM-A001")["sample"] is None
    with pytest.raises(ValueError, match="not a TCGA barcode"):
        parse_barcode("GTEX-1117F-0226")


def test_expression_sums_duplicate_symbols(cohort):
    tpm = _tpm()
    adata = read_tcga_expression(cohort / "expression" / "tpm.tsv", cohort / "expression" / "gene_map.tsv")
    assert adata.obs_names.tolist() == ALIQUOTS
    assert adata.var_names.tolist() == ["TP53", "CD99", "GAPDH"]
    assert adata.var.loc["CD99", "gene_ids"] == "ENSG00000002586.20;ENSG00000002586.20_PAR_Y"
    assert adata.var.loc["TP53", "gene_ids"] == "ENSG00000141510.17"
    np.testing.assert_allclose(adata[:, "CD99"].X.ravel(), tpm[1] + tpm[2])
    np.testing.assert_allclose(adata.X.sum(axis=1), 1e6)


def test_gene_map_without_versions(cohort):
    stripped = GENES.assign(gene_id=GENES["gene_id"].str.replace(r"\.\d+", "", regex=True))
    stripped.to_csv(cohort / "expression" / "gene_map.tsv", sep="\t", index=False)
    adata = read_tcga_expression(cohort / "expression" / "tpm.tsv", cohort / "expression" / "gene_map.tsv")
    assert adata.var_names.tolist() == ["TP53", "CD99", "GAPDH"]


def test_list_slides(cohort):
    slides = list_tcga_slides(cohort)
    assert slides["slide_id"].tolist() == sorted(SLIDES)
    assert slides["patient_id"].tolist() == ["TCGA-DM-A001", "TCGA-DM-A001", "TCGA-DM-A002"]
    assert slides["sample_code"].tolist() == ["TCGA-DM-A001-01", "TCGA-DM-A001-01", "TCGA-DM-A002-01"]
    assert all(p.is_file() for p in slides["path"])


def test_cohort_matches_slides_to_aliquots_by_sample_code(cohort):
    samples = read_tcga_cohort(cohort)
    assert [s.sample_id for s in samples] == sorted(SLIDES)
    tpm = _tpm()
    tumour_a001 = np.array([tpm[0, 0], tpm[1, 0] + tpm[2, 0], tpm[3, 0]])
    for sample in samples[:2]:  # two slides of one patient share the tumour aliquot
        assert sample.kind == "bulk"
        assert sample.patient_id == "TCGA-DM-A001"
        assert sample.expression.shape == (1, 3)
        assert sample.expression.obs_names.tolist() == [sample.sample_id]
        assert sample.metadata["aliquots"] == [ALIQUOTS[0]]
        np.testing.assert_allclose(sample.expression.X.ravel(), tumour_a001)
        assert sample.expression.X.sum() == pytest.approx(1e6)
    assert samples[2].metadata["aliquots"] == [ALIQUOTS[2]]
    assert [s.mpp for s in samples] == pytest.approx([0.25, 0.5, 0.75])
    assert samples[0].slide_path.suffix == ".svs"
    assert samples[0].metadata["slide_uuid"] == SLIDES["TCGA-DM-A001-01Z-00-DX1"]


def test_read_single_slide(cohort):
    expression = read_tcga_expression(
        cohort / "expression" / "tpm.tsv", cohort / "expression" / "gene_map.tsv"
    )
    sample = read_tcga_slide(cohort, "TCGA-DM-A002-01Z-00-DX1", expression=expression, mpp=0.33)
    assert sample.mpp == pytest.approx(0.33)
    assert sample.metadata["slide_uuid"] == SLIDES["TCGA-DM-A002-01Z-00-DX1"]
    assert read_sample("tcga", cohort, "TCGA-DM-A002-01Z-00-DX1").patient_id == "TCGA-DM-A002"
    with pytest.raises(InputError, match="no slide with barcode"):
        read_tcga_slide(cohort, "TCGA-DM-A009-01Z-00-DX1", expression=expression)


def test_slide_without_expression_listed(cohort, write_slide, rgb_image):
    for barcode in ("TCGA-DM-A003-01Z-00-DX1", "TCGA-DM-A002-06Z-00-DX1"):
        write_slide(cohort / "slides" / f"{barcode}.ffff.svs", rgb_image(256, 256), downsamples=(1,))
    with pytest.raises(InputError, match=re.escape("tpm.tsv")) as info:
        read_tcga_cohort(cohort)
    message = str(info.value)
    assert "TCGA-DM-A003-01Z-00-DX1" in message and "TCGA-DM-A002-06Z-00-DX1" in message
    assert "TCGA-DM-A001-01Z-00-DX1" not in message


def test_duplicated_gene_id_rejected(cohort):
    ids = GENES["gene_id"].tolist()
    ids[3] = ids[0]
    _write_table(cohort / "expression" / "tpm.tsv", _tpm(), gene_ids=ids)
    with pytest.raises(InputError, match=re.escape("tpm.tsv")) as info:
        read_tcga_cohort(cohort)
    assert "duplicated gene_id" in str(info.value)


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN"), (np.inf, "infinite"), (-5.0, "negative")])
def test_bad_tpm_values_rejected(cohort, value, message):
    tpm = _tpm()
    tpm[2, 1] = value
    _write_table(cohort / "expression" / "tpm.tsv", tpm)
    with pytest.raises(InputError, match=re.escape("tpm.tsv")) as info:
        read_tcga_expression(cohort / "expression" / "tpm.tsv", cohort / "expression" / "gene_map.tsv")
    assert message in str(info.value)


def test_tpm_not_summing_to_million_warns(cohort):
    _write_table(cohort / "expression" / "tpm.tsv", _tpm() / 2)
    with pytest.warns(UserWarning, match="1e6"):
        adata = read_tcga_expression(
            cohort / "expression" / "tpm.tsv", cohort / "expression" / "gene_map.tsv"
        )
    np.testing.assert_allclose(adata.X.sum(axis=1), 5e5)  # not rescaled


def test_missing_files(cohort, tmp_path):
    (cohort / "expression" / "gene_map.tsv").unlink()
    with pytest.raises(MissingInputError, match=re.escape("gene_map.tsv")):
        read_tcga_cohort(cohort)
    with pytest.raises(MissingInputError, match="slides"):
        list_tcga_slides(tmp_path / "empty")
