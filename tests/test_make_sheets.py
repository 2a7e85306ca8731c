"""scripts/make_sheet_hest.py and scripts/make_sheet_tcga.py: from what users download to bitro's layout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from bitro.io.tcga import read_tcga_expression, read_tcga_slide

ROOT = Path(__file__).resolve().parents[1]
SHEET_SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "samples.schema.yaml").read_text())


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_sheet(path: Path) -> pd.DataFrame:
    sheet = pd.read_csv(path, sep="\t", dtype={"sample_id": str, "patient_id": str})
    assert list(sheet.columns) == ["sample_id", "patient_id", "mpp"] and sheet["mpp"].isna().all()
    for record in sheet.to_dict("records"):
        jsonschema.validate({k: v for k, v in record.items() if pd.notna(v)}, SHEET_SCHEMA)
    return sheet


# ------------------------------------------------------------------------------------------------ HEST

# Rows in HEST_v1_1_0.csv's columns (a subset): two datasets label a patient "Patient 1".
HEST_TABLE = """dataset_title,id,organ,oncotree_code,species,patient,st_technology,disease_state,subseries
Her2 study,SPA5,Breast,IDC,Homo sapiens,Patient A,Spatial Transcriptomics,Cancer,A1
Her2 study,SPA4,Breast,IDC,Homo sapiens,Patient A,Spatial Transcriptomics,Cancer,A2
Her2 study,SPA3,Breast,IDC,Homo sapiens,Patient B,Spatial Transcriptomics,Cancer,B1
Colon atlas,ZEN2,Bowel,COAD,Homo sapiens,Patient 1,Visium,Cancer,X_Rep1
Colon atlas,ZEN1,Bowel,COAD,Homo sapiens,Patient 1,Visium,Cancer,X_Rep2
Vendor colon,TENX9,Bowel,COAD,Homo sapiens,,Visium,Cancer,
Vendor colon 2,TENX8,Bowel,COAD,Homo sapiens,Patient 1,Visium,Cancer,
Vendor colon 3,TENX7,Bowel,COAD,Homo sapiens,,Xenium,Cancer,
Mouse colon,NCBI1,Bowel,,Mus musculus,,Visium,Healthy,
"""


@pytest.fixture
def hest_csv(tmp_path: Path) -> Path:
    path = tmp_path / "HEST_v1_1_0.csv"
    path.write_text(HEST_TABLE)
    return path


def test_hest_ids_and_ranges_are_expanded() -> None:
    hest = script("make_sheet_hest")
    assert hest.expand_ids("SPA119-SPA121,NCBI642") == ["SPA119", "SPA120", "SPA121", "NCBI642"]
    assert hest.expand_ids("MEND3-1") == ["MEND1", "MEND2", "MEND3"]
    with pytest.raises(ValueError, match="one prefix"):
        hest.expand_ids("SPA1-NCBI3")


def test_hest_sheet_by_ids_keeps_patients_and_reports_missing(hest_csv: Path, tmp_path: Path, capsys) -> None:
    hest = script("make_sheet_hest")
    out = tmp_path / "her2.tsv"
    assert hest.main([str(hest_csv), "--ids", "SPA3-SPA6", "--out", str(out)]) == 0
    sheet = check_sheet(out)
    assert sheet["sample_id"].tolist() == ["SPA3", "SPA4", "SPA5"]
    assert sheet["patient_id"].tolist() == ["Patient_B", "Patient_A", "Patient_A"]
    assert "SPA6" in capsys.readouterr().err


def test_hest_sheet_by_oncotree_separates_same_label_of_two_datasets(
    hest_csv: Path, tmp_path: Path, capsys
) -> None:
    """'Patient 1' of two datasets is two people; a sample without patient is its own."""
    hest = script("make_sheet_hest")
    out = tmp_path / "coad.tsv"
    assert hest.main([str(hest_csv), "--oncotree", "coad", "--technology", "Visium", "--out", str(out)]) == 0
    sheet = check_sheet(out).set_index("sample_id")["patient_id"]
    assert set(sheet.index) == {"ZEN2", "ZEN1", "TENX9", "TENX8"}  # no Xenium, no mouse
    assert sheet["ZEN1"] == sheet["ZEN2"] != sheet["TENX8"]
    assert sheet["ZEN1"].endswith("_Patient_1") and sheet["TENX9"] == "TENX9"
    err = capsys.readouterr().err
    assert "no patient for TENX9" in err and "4 samples of 3 patients" in err


def test_hest_sheet_warns_about_non_spot_technologies(hest_csv: Path, capsys) -> None:
    hest = script("make_sheet_hest")
    assert hest.main([str(hest_csv), "--organ", "Bowel"]) == 0
    captured = capsys.readouterr()
    assert "Xenium samples selected" in captured.err and "NCBI1" not in captured.out  # mouse: species filter
    assert hest.main([str(hest_csv), "--organ", "Brain"]) == 1


# ------------------------------------------------------------------------------------------------ TCGA

SLIDES = {
    "TCGA-AA-0001-01Z-00-DX1": "11111111-0000-0000-0000-000000000001",
    "TCGA-AA-0001-01A-01-TS1": "11111111-0000-0000-0000-000000000002",
    "TCGA-AA-0002-01Z-00-DX1": "11111111-0000-0000-0000-000000000003",
    "TCGA-AA-0003-01Z-00-DX1": "11111111-0000-0000-0000-000000000004",
    "TCGA-AA-0004-01Z-00-DX1": "11111111-0000-0000-0000-000000000005",
}
RNA = {  # file id -> sample; 0003 has two RNA-seq files, 0004 none
    "22222222-0000-0000-0000-000000000001": "TCGA-AA-0001-01A",
    "22222222-0000-0000-0000-000000000002": "TCGA-AA-0002-01A",
    "22222222-0000-0000-0000-000000000003": "TCGA-AA-0003-01A",
    "22222222-0000-0000-0000-000000000004": "TCGA-AA-0003-01A",
}
GENES = [  # gene_id, gene_name, gene_type
    ("ENSG00000141510.17", "TP53", "protein_coding"),
    ("ENSG00000146648.18", "EGFR", "protein_coding"),
    ("ENSG00000141736.14", "ERBB2", "protein_coding"),
]


def gdc_sample_sheet(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    """A GDC portal sample sheet: File ID, File Name, Data Category, Data Type, Project ID, Case ID, ..."""
    header = "File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tTissue Type\n"
    lines = [
        f"{fid}\t{name}\t{category}\t{kind}\tTCGA-XX\t{sample[:12]}\t{sample}\tTumor\n"
        for fid, name, category, kind, sample in rows
    ]
    path.write_text(header + "".join(lines))
    return path


def star_file(path: Path, tpm: list[float]) -> None:
    """A GDC STAR gene-count file: a comment line, the header, four N_ rows, then the genes."""
    lines = ["# gene-model: GENCODE v36\n"]
    lines.append(
        "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\t"
        "tpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded\n"
    )
    lines += [
        f"{n}\t\t\t10\t5\t5\t\t\t\n" for n in ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
    ]
    lines += [
        f"{gid}\t{name}\t{kind}\t100\t50\t50\t{t}\t1.0\t2.0\n"
        for (gid, name, kind), t in zip(GENES, tpm, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


@pytest.fixture
def gdc_download(tmp_path: Path) -> tuple[Path, Path, Path]:
    """gdc-client's layout (<dir>/<file id>/<file name>) and the two GDC sample sheets."""
    downloads = tmp_path / "gdc"
    slide_rows = []
    for barcode, uuid in SLIDES.items():
        name = f"{barcode}.{uuid.upper()}.svs"
        (downloads / uuid).mkdir(parents=True)
        (downloads / uuid / name).write_bytes(b"")
        slide_rows.append((uuid, name, "Biospecimen", "Slide Image", barcode[:16]))
    clinical = ("33333333-0000-0000-0000-000000000001", "clinical.TCGA-AA-0001.xml", "Clinical", "x", "")
    slide_rows.append(clinical)  # not a slide: left out
    rna_rows = []
    for k, (fid, sample) in enumerate(RNA.items()):
        name = f"{fid[:8]}.rna_seq.augmented_star_gene_counts.tsv"
        star_file(downloads / fid / name, [5e5, 3e5, 2e5] if k != 3 else [3e5, 3e5, 4e5])
        rna_rows.append((fid, name, "Transcriptome Profiling", "Gene Expression Quantification", sample))
    slides_sheet = gdc_sample_sheet(tmp_path / "gdc_sample_sheet.tsv", slide_rows)
    rna_sheet = gdc_sample_sheet(tmp_path / "gdc_sample_sheet_rna.tsv", rna_rows)
    return downloads, slides_sheet, rna_sheet


def test_tcga_expression_from_star_counts_reads_back(gdc_download, tmp_path: Path) -> None:
    tcga = script("make_sheet_tcga")
    downloads, _, rna_sheet = gdc_download
    out = tmp_path / "cohort" / "expression"
    args = ["expression", "--sample-sheet", str(rna_sheet), "--files", str(downloads), "--out", str(out)]
    assert tcga.main(args) == 0
    expression = read_tcga_expression(out / "tpm.tsv", out / "gene_map.tsv")
    assert expression.obs_names.tolist() == ["TCGA-AA-0001-01A", "TCGA-AA-0002-01A", "TCGA-AA-0003-01A"]
    assert expression.var_names.tolist() == ["TP53", "EGFR", "ERBB2"]  # N_ rows dropped, symbols by id
    values = np.asarray(expression.X)
    assert np.allclose(values[0], [5e5, 3e5, 2e5])
    assert np.allclose(values[2], [4e5, 3e5, 3e5])  # two files of one sample: averaged
    assert np.allclose(values.sum(axis=1), 1e6)


def test_tcga_slide_sheet_filters_links_and_reads(
    gdc_download, tmp_path: Path, write_slide, rgb_image
) -> None:
    """Diagnostic slides with RNA-seq only, linked into slides/, then read by bitro as a bulk sample."""
    tcga = script("make_sheet_tcga")
    downloads, slides_sheet, rna_sheet = gdc_download
    root = tmp_path / "cohort"
    expression = ["expression", "--sample-sheet", str(rna_sheet), "--files", str(downloads)]
    assert tcga.main([*expression, "--out", str(root / "expression")]) == 0
    out = tmp_path / "sheet.tsv"
    args = ["slides", "--sample-sheet", str(slides_sheet), "--slide-type", "diagnostic"]
    args += ["--expression", str(root / "expression" / "tpm.tsv"), "--downloads", str(downloads)]
    args += ["--link-into", str(root / "slides"), "--out", str(out)]
    assert tcga.main(args) == 0
    sheet = check_sheet(out)
    # The frozen TS1 slide is not diagnostic; 0004 has no RNA-seq; patient = barcode[:12].
    assert sheet["sample_id"].tolist() == [
        "TCGA-AA-0001-01Z-00-DX1",
        "TCGA-AA-0002-01Z-00-DX1",
        "TCGA-AA-0003-01Z-00-DX1",
    ]
    assert sheet["patient_id"].tolist() == ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003"]
    links = sorted(p.name for p in (root / "slides").iterdir())
    assert links == [f"{s}.{SLIDES[s].upper()}.svs" for s in sheet["sample_id"]]
    assert all((root / "slides" / name).is_symlink() for name in links)

    # A real slide behind the link: bitro reads the sample with its sample's TPM profile.
    slide = root / "slides" / links[0]
    target = slide.resolve()
    slide.unlink()
    write_slide(target, rgb_image(256, 256), mpp=0.5, downsamples=(1,))
    slide.symlink_to(target)
    sample = read_tcga_slide(root, "TCGA-AA-0001-01Z-00-DX1")
    assert sample.patient_id == "TCGA-AA-0001" and sample.mpp == pytest.approx(0.5)
    assert np.allclose(np.asarray(sample.expression.X), [[5e5, 3e5, 2e5]])


def test_tcga_slide_sheet_from_a_manifest_and_its_errors(gdc_download, tmp_path: Path, capsys) -> None:
    tcga = script("make_sheet_tcga")
    _, slides_sheet, _ = gdc_download
    table = pd.read_csv(slides_sheet, sep="\t")
    manifest = tmp_path / "gdc_manifest.txt"
    pd.DataFrame(
        {
            "id": table["File ID"],
            "filename": table["File Name"],
            "md5": "0" * 32,
            "size": 1,
            "state": "released",
        }
    ).to_csv(manifest, sep="\t", index=False)
    assert tcga.main(["slides", "--manifest", str(manifest)]) == 0
    out = capsys.readouterr()
    rows = [line.split("\t")[0] for line in out.out.splitlines()[1:]]
    assert sum(r.startswith("TCGA-AA-0001-") for r in rows) == 2 and "5 slides of 4 patients" in out.err
    with pytest.raises(SystemExit, match="one of --sample-sheet and --manifest"):
        tcga.main(["slides"])
    table.loc[0, "Case ID"] = "TCGA-AA-9999"
    table.to_csv(slides_sheet, sep="\t", index=False)
    with pytest.raises(SystemExit, match="GDC gives case TCGA-AA-9999"):
        tcga.main(["slides", "--sample-sheet", str(slides_sheet)])
