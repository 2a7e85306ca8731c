import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

COHORTS = config["cohorts"]
RESULTS = Path("results")
LOGS = RESULTS / "logs"
BENCHMARKS = RESULTS / "benchmarks"
SAMPLE_DIR = RESULTS / "{cohort}" / "samples" / "{sample}"
REPO = Path(workflow.basedir).parent
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


def repo_path(path):
    """A config path as given when it exists from the working directory, else relative to the repository."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO / path


STAIN_TARGET = repo_path(config["stain"]["target"])
STAIN_TARGET_IS_REFERENCE = STAIN_TARGET.suffix.lower() == ".json"
STAIN_REFERENCE = (
    STAIN_TARGET if STAIN_TARGET_IS_REFERENCE else RESULTS / "stain_reference.json"
)
CELLVIT = config["segmentation"]["cellvit"]
CELLVIT_MODEL = repo_path(CELLVIT["model"])
CELLS_GEOJSON = config["segmentation"]["geojson"]


def segmentation(cohort):
    """The segmentation settings of a cohort: the global ones, overridden by the cohort's own."""
    return config["segmentation"] | COHORTS[cohort].get("segmentation", {})


def precomputed_file(wildcards):
    pattern = segmentation(wildcards.cohort).get("path")
    return None if pattern is None else Path(pattern.format(sample=wildcards.sample))


def cells_inputs(wildcards):
    """Inputs of the cells rule: the sample, its tissue and units, and what its backend segments from."""
    inputs = sample_inputs(wildcards) | {
        "tissue": sample_dir(wildcards.cohort, wildcards.sample) / "tissue.npz",
        "units": sample_dir(wildcards.cohort, wildcards.sample) / "units.parquet",
    }
    backend = segmentation(wildcards.cohort)["backend"]
    if backend == "classical":
        inputs["stain"] = sample_dir(wildcards.cohort, wildcards.sample) / "stain.json"
    elif backend == "cellvit":
        inputs["segmentation"] = (
            sample_dir(wildcards.cohort, wildcards.sample) / "cellvit" / "output"
        )
    elif precomputed_file(wildcards) is not None:
        inputs["segmentation"] = precomputed_file(wildcards)
    return inputs


def segmentation_args(wildcards, input):
    """The backend options of ``bitro cells`` for a sample."""
    settings = segmentation(wildcards.cohort)
    args = [f"--backend {settings['backend']}"]
    if "segmentation" in input.keys():
        args.append(f"--segmentation {input.segmentation}")
    if settings["backend"] == "classical":
        args += [
            f"--stain {input.stain}",
            f"--segment-mpp {settings['mpp']}",
            f"--min-area-um2 {settings['min_area_um2']}",
            f"--max-area-um2 {settings['max_area_um2']}",
            f"--min-distance-um {settings['min_distance_um']}",
            f"--threshold-factor {settings['threshold_factor']}",
            f"--core-factor {settings['core_factor']}",
        ]
        if not settings["polygons"]:
            args.append("--no-polygons")
    return " ".join(args)


def cells_outputs():
    outputs = {"cells": SAMPLE_DIR / "cells.parquet"}
    if CELLS_GEOJSON:
        outputs["geojson"] = SAMPLE_DIR / "cells.geojson"
    return outputs


def geojson_arg(wildcards, output):
    return f"--geojson {output.geojson}" if CELLS_GEOJSON else ""


FEATURES = config["features"]


def encoder_weights_arg(wildcards):
    weights = FEATURES.get("weights")
    return "" if weights is None else f"--weights {repo_path(weights)}"


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
        for name in ("units.parquet", "targets.h5ad", "features.npy", "graph.npz")
    ]
