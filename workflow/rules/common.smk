import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

COHORTS = config["cohorts"]
RESULTS = Path("results")
LOGS = RESULTS / "logs"
BENCHMARKS = RESULTS / "benchmarks"
DEMO = config.get("demo", {})
DEMO_ENABLED = DEMO.get("generate", False)
DEMO_DIR = Path(DEMO.get("outdir", RESULTS / "demo_data"))
DEMO_MANIFEST = DEMO_DIR / "manifest.json"
for _name, _cohort in COHORTS.items():
    if _cohort.get("generated_by_demo", False) and not DEMO_ENABLED:
        raise ValueError(
            f"cohort {_name!r} is generated_by_demo but demo.generate is false"
        )


def load_sample_sheet(cohort):
    path = COHORTS[cohort]["samples"]
    sheet = pd.read_csv(path, sep="\t", dtype={"sample_id": str, "patient_id": str})
    validate(sheet, schema="../schemas/samples.schema.yaml")
    duplicated = sheet["sample_id"][sheet["sample_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: duplicated sample_id {duplicated}")
    return sheet.set_index("sample_id", drop=False)


SAMPLES = {cohort: load_sample_sheet(cohort) for cohort in COHORTS}


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    cohort=_alternatives(COHORTS),
    sample=_alternatives(s for sheet in SAMPLES.values() for s in sheet.index),


def sample_dir(cohort, sample):
    return RESULTS / cohort / "samples" / sample


def cohort_root(cohort):
    return Path(COHORTS[cohort]["root"])


def sample_inputs(wildcards):
    """The files a sample is read from: the demo manifest, or the sample's files in its layout."""
    cohort, sample = COHORTS[wildcards.cohort], wildcards.sample
    if cohort.get("generated_by_demo", False):
        return {"source": DEMO_MANIFEST}
    root = Path(cohort["root"])
    if cohort["format"] == "hest":
        return {
            "expression": root / "st" / f"{sample}.h5ad",
            "slide": root / "wsis" / f"{sample}.tif",
            "metadata": root / "metadata" / f"{sample}.json",
        }
    if cohort["format"] == "tcga":
        slides = sorted((root / "slides").glob(f"{sample}.*"))
        return {
            "expression": root / "expression" / "tpm.tsv",
            "gene_map": root / "expression" / "gene_map.tsv",
            "slide": slides[0] if slides else root / "slides" / f"{sample}.svs",
        }
    bundle = root / sample
    # Vendors prefix the H&E image and its alignment with the run name: take whatever is there.
    return {
        "cells": bundle / "cells.parquet",
        "matrix": bundle / "cell_feature_matrix.h5",
        "he_files": sorted(bundle.glob("*he_image*.tif*"))
        + sorted(bundle.glob("*imagealignment.csv")),
    }


def sample_args(wildcards):
    """Command-line options that name a sample for the ``bitro`` verbs."""
    cohort = COHORTS[wildcards.cohort]
    args = [
        f"--format {cohort['format']}",
        f"--root {cohort['root']}",
        f"--sample {wildcards.sample}",
    ]
    mpp = SAMPLES[wildcards.cohort].loc[wildcards.sample].get("mpp")
    if pd.notna(mpp):
        args.append(f"--mpp {float(mpp)}")
    return " ".join(args)


def all_targets():
    return [
        sample_dir(cohort, sample) / name
        for cohort, sheet in SAMPLES.items()
        for sample in sheet.index
        for name in ("units.parquet", "targets.h5ad")
    ]
