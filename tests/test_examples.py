"""The real-cohort examples in config/examples/: valid, complete, and each one dry-runs on stub inputs.

Every example is dry-run by the repository's workflow in a scratch directory whose cohort roots hold empty
files at exactly the paths ``bitro.layout`` names for the workflow, so the DAG a user gets
after downloading the data is the one checked here: every sample embedded with DINOv3 on a GPU, every fold
trained on a GPU, each cohort's tables and each transfer pair's tables scheduled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from bitro.io.tcga import parse_barcode

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "config" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAKEFILE = ROOT / "workflow" / "Snakefile"
WEIGHTS = ROOT / "resources" / "weights" / "dinov3_vitl16"

# The paper's cohorts (Tables 4-6) and its bulk <-> ST transfer pairs (section 3.5).
PAPER_COHORTS = {
    "hest_brca": ("st", "hest"),
    "hest_coad": ("st", "hest"),
    "hest_prad": ("st", "hest"),
    "hest_hcc": ("st", "hest"),
    "hest_cscc": ("st", "hest"),
    "tcga_brca": ("bulk", "tcga"),
    "tcga_coad": ("bulk", "tcga"),
    "tcga_prad": ("bulk", "tcga"),
    "tcga_lihc": ("bulk", "tcga"),
    "xenium_brca": ("xenium", "xenium"),
    "xenium_coad": ("xenium", "xenium"),
    "xenium_prad": ("xenium", "xenium"),
    "xenium_lihc": ("xenium", "xenium"),
}
TRANSFER_PAIRS = {
    "brca_transfer": ("hest_brca", "tcga_brca"),
    "coad_transfer": ("hest_coad", "tcga_coad"),
    "prad_transfer": ("hest_prad", "tcga_prad"),
    "lihc_transfer": ("hest_hcc", "tcga_lihc"),
}
# Paper Tables 5-6: the spatial cohorts' section counts, and the Xenium sections by HEST id.
PAPER_SECTIONS = {"hest_brca": 36, "hest_coad": 15, "hest_cscc": 12, "hest_hcc": 2, "hest_prad": 23}
PAPER_XENIUM = {
    "xenium_brca": "NCBI785",
    "xenium_coad": "TENX139",
    "xenium_lihc": "TENX120",
    "xenium_prad": "TENX157",
}
# Cohorts whose public sample list is too small for their protocol (their configs say so): a patient split
# needs 3 patients. A dry run stops on them, naming the sheet. (Leave-one-out runs from 2 groups.)
TOO_SMALL = {"tcga_lihc"}


def load(example: Path) -> dict:
    return yaml.safe_load(example.read_text())


def sheet_of(cohort: dict) -> pd.DataFrame:
    return pd.read_csv(ROOT / cohort["samples"], sep="\t", dtype={"sample_id": str, "patient_id": str})


def all_cohorts() -> dict[str, dict]:
    cohorts: dict[str, dict] = {}
    for example in EXAMPLES:
        for name, cohort in load(example)["cohorts"].items():
            assert cohorts.setdefault(name, cohort) == cohort, f"{name} differs between examples"
    return cohorts


def n_groups(cohort: dict, sheet: pd.DataFrame, config: dict) -> int:
    """The number of folds the workflow plans for a cohort (its protocol's groups)."""
    if cohort["level"] == "bulk":
        return 1
    if cohort["level"] == "xenium":
        return config.get("evaluation", {}).get("xenium_strips", 5)
    by = cohort.get("group_by", config.get("evaluation", {}).get("st_group_by", "patient"))
    return sheet["patient_id"].nunique() if by == "patient" else len(sheet)


def test_examples_cover_the_papers_cohorts_and_pairs() -> None:
    cohorts = all_cohorts()
    assert {name: (c["level"], c["format"]) for name, c in cohorts.items()} == PAPER_COHORTS
    names = {example.stem for example in EXAMPLES}
    assert names == set(PAPER_COHORTS) | set(TRANSFER_PAIRS)
    for name, (st, bulk) in TRANSFER_PAIRS.items():
        config = load(EXAMPLES_DIR / f"{name}.yaml")
        assert set(config["cohorts"]) == {st, bulk}
        assert config["transfer"]["mode"] == "lora"
        assert sorted(map(tuple, config["transfer"]["pairs"])) == sorted([(st, bulk), (bulk, st)])
    for name, count in PAPER_SECTIONS.items():
        assert len(sheet_of(cohorts[name])) == count, name
    for name, section in PAPER_XENIUM.items():
        assert sheet_of(cohorts[name])["sample_id"].tolist() == [section]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_and_sheets_are_valid(example: Path) -> None:
    """Schema-valid config and sheets, the paper's encoder on a GPU, and sheets fit for their protocol."""
    config_schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sheet_schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "samples.schema.yaml").read_text())
    config = load(example)
    jsonschema.validate(config, config_schema)
    assert config["features"] == {
        "encoder": "dinov3_vitl16",
        "weights": str(WEIGHTS.relative_to(ROOT)),
        "gpu": 1,
    }
    assert config["training"] == {"gpu": 1}  # everything else is the schema's default: the paper's setting
    for name, cohort in config["cohorts"].items():
        sheet = sheet_of(cohort)
        assert (
            list(sheet.columns) == ["sample_id", "patient_id", "mpp"]
            and not sheet["sample_id"].duplicated().any()
        )
        for record in sheet.to_dict("records"):
            jsonschema.validate({k: v for k, v in record.items() if pd.notna(v)}, sheet_schema)
        if cohort["format"] == "tcga":  # patient = the barcode's first 12 characters
            for slide, patient in zip(sheet["sample_id"], sheet["patient_id"], strict=True):
                parts = parse_barcode(slide)
                assert parts["slide"] is not None and parts["patient"] == patient, slide
        else:
            assert cohort["segmentation"] == {"backend": "precomputed"}, name
        if name not in TOO_SMALL and cohort["level"] == "st":
            assert n_groups(cohort, sheet, config) >= 2, name
        if name not in TOO_SMALL and cohort["level"] == "bulk":
            assert sheet["patient_id"].nunique() >= 3, name
    text = example.read_text()
    assert all(len(line) <= 110 for line in text.splitlines()), "keep example lines short"
    assert ("NOT RUNNABLE" in text) == bool(TOO_SMALL & set(config["cohorts"]))


# --------------------------------------------------------------------------------------------- dry runs


def read_from(cohort: dict, sample: str) -> list[str]:
    """What a sample is read from, relative to its cohort root: the files users download (docs/formats.md)."""
    if cohort["format"] == "hest":
        return [f"st/{sample}.h5ad", f"wsis/{sample}.tif", f"metadata/{sample}.json"]
    if cohort["format"] == "tcga":  # GDC names slide files {barcode}.{uuid}.svs
        return [f"slides/{sample}.6d6e3224-50a0-45a2-b231-eef27ca7efd2.svs", "expression/tpm.tsv"]
    prefix = f"{sample}/Xenium_{sample}"  # 10x prefixes the H&E files with the run name
    files = [f"{sample}/experiment.xenium", f"{sample}/cells.parquet", f"{sample}/cell_feature_matrix.h5"]
    return [*files, f"{prefix}_he_image.ome.tif", f"{prefix}_he_imagealignment.csv"]


def stub_files(cohort: dict, sheet: pd.DataFrame) -> list[str]:
    """Empty stand-ins for every file of the cohort's layout, relative to its root."""
    files = ["expression/gene_map.tsv"] if cohort["format"] == "tcga" else []
    for sample in sheet["sample_id"]:
        files += read_from(cohort, sample)
        if cohort["format"] == "hest":
            files += [f"cellvit_seg/{sample}_cellvit_seg.parquet"]
    return files


def stub_project(workdir: Path, example: Path) -> dict:
    """A scratch project: the example's config with its roots moved under ``workdir``, sheets and stubs."""
    config = load(example)
    for cohort in config["cohorts"].values():
        root = workdir / "data" / cohort["root"].lstrip("/")
        cohort["root"] = str(root)
        sheet = sheet_of(cohort)
        (workdir / cohort["samples"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / cohort["samples"], workdir / cohort["samples"])
        for name in stub_files(cohort, sheet):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).touch()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def dry_run(workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--configfile", "config.yaml"]
    return subprocess.run(
        [*command, "--cores", "2", "--dry-run", "--printshellcmds"],
        cwd=workdir,
        env={**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


def planned_jobs(output: str) -> list[dict[str, str]]:
    """The jobs of a dry run: rule, and each ``key: value`` line of its block (shell command as ``shell``)."""
    jobs: list[dict[str, str]] = []
    job: dict[str, str] | None = None
    for line in output.splitlines():
        start = re.fullmatch(r"(?:local)?rule (\w+):", line)
        if start:
            job = {"rule": start.group(1)}
            jobs.append(job)
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line.removeprefix("Shell command: ")
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            job[key] = value
        elif not line.strip():
            job = None
    return jobs


def resources(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)


def wildcards(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("wildcards", "").split(", ") if "=" in item)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_dry_runs_on_stub_inputs(tmp_path: Path, example: Path) -> None:
    config = stub_project(tmp_path, example)
    done = dry_run(tmp_path)
    small = TOO_SMALL & set(config["cohorts"])
    if small:
        assert done.returncode != 0
        split = "a patient split (test, validation, training) needs at least 3 patients"
        assert all(f"{name}.tsv: {split}" in done.stdout for name in small)
        return
    assert done.returncode == 0, done.stdout[-5000:]
    jobs = planned_jobs(done.stdout)
    by_rule = Counter(job["rule"] for job in jobs)
    assert "generate_demo" not in by_rule and "segment_cellvit" not in by_rule
    outputs = {path for job in jobs for path in job.get("output", "").split(", ") if path}

    for name, cohort in config["cohorts"].items():
        sheet = sheet_of(cohort)
        samples = set(sheet["sample_id"])
        folds = n_groups(cohort, sheet, config)
        assert {f"results/{name}/metrics.tsv", f"results/{name}/baselines.tsv"} <= outputs
        mine = [job for job in jobs if wildcards(job).get("cohort") == name]
        for rule in ("prepare", "cells", "embed", "reduce", "graph"):
            assert {wildcards(job)["sample"] for job in mine if job["rule"] == rule} == samples, (name, rule)
        for rule in ("phenotypes", "train", "predict", "baselines"):
            assert sum(job["rule"] == rule for job in mine) == folds, (name, rule)
        root = cohort["root"]
        for job in mine:
            shell = job.get("shell", "")
            if job["rule"] == "embed":
                # The paper's encoder from the documented weights folder, on a GPU, in tile-token mode.
                assert resources(job)["gpu"] == "1" and "--device cuda" in shell
                assert "--encoder dinov3_vitl16" in shell and f"--weights {WEIGHTS}" in shell
                assert "--mode tile-token" in shell and f"--root {root}" in shell
                # Tile-token mode reads the slide itself: the sample's downloaded files are its inputs.
                sample = wildcards(job)["sample"]
                expected = {f"{root}/{name}" for name in read_from(cohort, sample)}
                assert expected <= set(job["input"].split(", ")), (expected, job["input"])
            if job["rule"] == "train":
                assert resources(job)["gpu"] == "1" and "--device cuda" in shell
                assert '"lr": 0.0001' in shell and '"max_steps": 16000' in shell
                assert '"patience_steps": 1000' in shell
            if job["rule"] == "cells":
                backend = "classical" if cohort["format"] == "tcga" else "precomputed"
                assert f"--backend {backend}" in shell, shell

    pairs = [tuple(pair) for pair in config.get("transfer", {}).get("pairs", [])]
    for source, target in pairs:
        assert f"results/transfer/{source}_to_{target}/metrics.tsv" in outputs
        pair = [
            job
            for job in jobs
            if wildcards(job).get("source") == source and wildcards(job).get("target") == target
        ]
        target_folds = n_groups(config["cohorts"][target], sheet_of(config["cohorts"][target]), config)
        assert Counter(job["rule"] for job in pair) == {
            "transfer_pretrain": 1,
            "transfer_finetune": target_folds,
            "transfer_predict": target_folds,
            "transfer_metrics": 1,
        }
        for job in pair:
            if job["rule"] in ("transfer_pretrain", "transfer_finetune"):
                assert resources(job)["gpu"] == "1" and "--device cuda" in job["shell"]
    assert by_rule.get("transfer_pretrain", 0) == len(pairs)
