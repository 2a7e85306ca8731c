# Glue between the config, the sample sheets and the wildcards. Where files are (inputs of each layout,
# every output path, fold and figure names) is bitro.layout's to say; what makes a sample sheet unusable,
# bitro.doctor's.
import json
import re
import shlex
from types import SimpleNamespace
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

from bitro import layout
from bitro.doctor import cohort_segmentation, sheet_problems
from bitro.layout import CohortFile, FoldFile, SampleFile, sample_dir

validate(config, schema="../schemas/config.schema.yaml")

COHORTS = config["cohorts"]
RESULTS = layout.RESULTS
LOGS = layout.logs_dir()
BENCHMARKS = layout.benchmarks_dir()
SAMPLE_DIR = sample_dir()
REPO = Path(workflow.basedir).parent
DEMO = config.get("demo", {})
DEMO_ENABLED = DEMO.get("generate", False)
DEMO_DIR = Path(DEMO.get("outdir", layout.demo_data_dir()))
DEMO_MANIFEST = DEMO_DIR / layout.DEMO_MANIFEST
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
    # Splits group a patient's samples: a cohort that trains names every sample's patient.
    if "bundle" not in COHORTS[cohort] and (
        "patient_id" not in sheet or sheet["patient_id"].isna().any()
    ):
        raise ValueError(
            f"{path}: patient_id is required for every sample of a cohort that trains"
        )
    return sheet.set_index("sample_id", drop=False)


SAMPLES = {cohort: load_sample_sheet(cohort) for cohort in COHORTS}
# A cohort with a `bundle` is predicted by that model (predict.smk), never trained or scored; the others
# are cross-validated and may give a bundle of their own (final.smk).
PREDICTED = [name for name, cohort in COHORTS.items() if "bundle" in cohort]
EVALUATED = [name for name in COHORTS if name not in PREDICTED]


def check_sheets():
    """Stop the workflow on a sample sheet unusable as it is (the checks bitro doctor runs on it too)."""
    problems = [
        problem
        for name in EVALUATED
        for problem in sheet_problems(
            Path(COHORTS[name]["samples"]), COHORTS[name], EVALUATION
        )
    ]
    if problems and config["doctor"]["enabled"]:
        raise ValueError(
            "sample sheet(s) unusable (bitro doctor lists every problem):\n  "
            + "\n  ".join(problems)
        )


def _alternatives(values):
    return "|".join(re.escape(v) for v in sorted(set(values)))


wildcard_constraints:
    cohort=_alternatives(COHORTS),
    source=_alternatives(EVALUATED),
    target=_alternatives(EVALUATED),
    variant=r"[A-Za-z0-9_]+",
    scope=r"sample|cohort",
    fold=layout.FOLD_PATTERN,
    sample=_alternatives(s for sheet in SAMPLES.values() for s in sheet.index),


def sample_inputs(wildcards):
    """The files a sample is read from: the demo manifest, or the sample's files in its layout."""
    cohort = COHORTS[wildcards.cohort]
    if cohort.get("generated_by_demo", False):
        return {"source": DEMO_MANIFEST}
    slide_file = SAMPLES[wildcards.cohort].loc[wildcards.sample].get("file")
    files = layout.sample_files(
        cohort["format"],
        Path(cohort["root"]),
        wildcards.sample,
        file=slide_file if pd.notna(slide_file) else None,
    )
    return files.paths()


#: A wildcard constraint no cohort matches (a rule for the evaluated or predicted cohorts, when there are none).
NO_COHORT = "(?!)"


def prepare_args(wildcards):
    """The tissue, units and stain settings of ``bitro prepare`` for a sample's cohort."""
    tissue = cohort_setting(wildcards.cohort, "tissue")
    units = cohort_setting(wildcards.cohort, "units")
    stain = cohort_setting(wildcards.cohort, "stain")
    return " ".join(
        [
            f"--mask-mpp {tissue['mask_mpp']}",
            f"--patch-size-um {units['patch_size_um']}",
            f"--min-tissue-fraction {units['min_tissue_fraction']}",
            f"--method {stain['method']} --fit-mpp {stain['fit_mpp']}",
            f"--n-tiles {stain['n_tiles']}",
        ]
    )


def targets_out_arg(wildcards, output):
    """``--targets-out`` when the rule writes the sample's targets (an evaluated cohort's)."""
    return f"--targets-out {output.targets}" if "targets" in output.keys() else ""


def repo_path(path):
    """A config path as given when it exists from the working directory, else relative to the repository."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO / path


STAIN_TARGET = repo_path(config["stain"]["target"])
STAIN_TARGET_IS_REFERENCE = STAIN_TARGET.suffix.lower() == ".json"
STAIN_REFERENCE = (
    STAIN_TARGET if STAIN_TARGET_IS_REFERENCE else RESULTS / layout.STAIN_REFERENCE
)
CELLVIT = config["segmentation"]["cellvit"]
CELLVIT_MODEL = repo_path(CELLVIT["model"])
CELLS_GEOJSON = config["segmentation"]["geojson"]


def segmentation(cohort):
    """The segmentation settings of a cohort: the global ones, overridden by the cohort's own."""
    return cohort_segmentation(config, COHORTS[cohort])


def precomputed_file(wildcards):
    pattern = segmentation(wildcards.cohort).get("path")
    return None if pattern is None else Path(pattern.format(sample=wildcards.sample))


def cells_inputs(wildcards):
    """Inputs of the cells rule: the sample, its tissue and units, and what its backend segments from."""
    folder = sample_dir(wildcards.cohort, wildcards.sample)
    inputs = sample_inputs(wildcards) | {
        "tissue": folder / SampleFile.TISSUE,
        "units": folder / SampleFile.UNITS,
    }
    backend = segmentation(wildcards.cohort)["backend"]
    if backend in ("classical", "histomicstk"):
        inputs["stain"] = folder / SampleFile.STAIN
    elif backend == "cellvit":
        inputs["segmentation"] = folder / SampleFile.CELLVIT_OUTPUT
    elif precomputed_file(wildcards) is not None:
        inputs["segmentation"] = precomputed_file(wildcards)
    return inputs


def segmentation_args(wildcards, input):
    """The backend options of ``bitro cells`` for a sample."""
    settings = segmentation(wildcards.cohort)
    args = [f"--backend {settings['backend']}"]
    if "segmentation" in input.keys():
        args.append(f"--segmentation {input.segmentation}")
    if settings["backend"] in ("classical", "histomicstk"):
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
    outputs = {"cells": SAMPLE_DIR / SampleFile.CELLS}
    if CELLS_GEOJSON:
        outputs["geojson"] = SAMPLE_DIR / SampleFile.CELLS_GEOJSON
    return outputs


def geojson_arg(wildcards, output):
    return f"--geojson {output.geojson}" if CELLS_GEOJSON else ""


def crops_output():
    """crops.zarr: temporary (only the embed rule reads it) unless crops.keep."""
    crops = directory(SAMPLE_DIR / SampleFile.CROPS)
    return crops if config["crops"]["keep"] else temp(crops)


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
    row = SAMPLES[wildcards.cohort].loc[wildcards.sample]
    if pd.notna(row.get("mpp")):
        args.append(f"--mpp {float(row['mpp'])}")
    if pd.notna(row.get("file")):
        args.append(f"--slide-file {shlex.quote(str(row['file']))}")
    return " ".join(args)


COHORT_DIR = layout.cohort_dir()
FOLD_DIR = layout.fold_dir()
EVALUATION = config["evaluation"]
TRAINING = config["training"]


def cohort_training(cohort):
    """The training settings of one cohort: ``training`` with the cohort's own ``training`` over it."""
    return TRAINING | COHORTS[cohort].get("training", {})


def training_settings(wildcards):
    """The model and training settings of ``bitro train``, as JSON (the rule quotes it for the shell)."""
    return json.dumps(
        {"model": config["model"], "training": cohort_training(wildcards.cohort)}
    )


def fold_dir(wildcards):
    return layout.fold_dir(wildcards.cohort, wildcards.fold)


def samples_dir(wildcards):
    return layout.samples_dir(wildcards.cohort)


def st_group_by(cohort):
    return COHORTS[cohort].get("group_by", EVALUATION["st_group_by"])


check_sheets()


def fold_names(cohort):
    """The folds folds.json will hold, known from the sample sheet before it is written."""
    sheet = SAMPLES[cohort]
    count = layout.fold_count(
        COHORTS[cohort]["level"],
        sheet["sample_id"].astype(str).tolist(),
        sheet["patient_id"].fillna("").astype(str).tolist(),
        group_by=st_group_by(cohort),
        bulk_folds=EVALUATION["bulk_folds"],
        xenium_strips=EVALUATION["xenium_strips"],
    )
    return layout.fold_names(count)


def cohort_sample_files(name):
    """Input function: ``name`` in every sample folder of the cohort."""

    def files(wildcards):
        return [
            sample_dir(wildcards.cohort, sample) / name
            for sample in SAMPLES[wildcards.cohort].index
        ]

    return files


cohort_targets = cohort_sample_files(SampleFile.TARGETS)


def gene_list_input(wildcards):
    path = COHORTS[wildcards.cohort].get("gene_list")
    return [] if path is None else [repo_path(path)]


def fold_cells_inputs(wildcards):
    """Strips (Xenium, and the validation strip of a two-group ST cohort) are cut from the cells' extent."""
    level = COHORTS[wildcards.cohort]["level"]
    if level == "xenium" or (level == "st" and len(fold_names(wildcards.cohort)) == 2):
        return cohort_sample_files(SampleFile.CELLS)(wildcards)
    return []


def folds_file(wildcards):
    """The cohort's folds.json, or for its final model the final fold's (final.smk)."""
    if wildcards.fold == layout.FINAL_FOLD:
        return layout.fold_dir(wildcards.cohort, layout.FINAL_FOLD) / CohortFile.FOLDS
    return layout.cohort_dir(wildcards.cohort) / CohortFile.FOLDS


def feature_inputs(wildcards, scope=None):
    """Per-cell features of every sample and, in cohort scope, the fold's PCA basis."""
    scope = scope or getattr(wildcards, "scope", None) or TRAINING["feature_scope"]
    inputs = {"folds": folds_file(wildcards)}
    if scope == "cohort":
        inputs["embeddings"] = cohort_sample_files(SampleFile.EMBEDDINGS)(wildcards)
        inputs["basis"] = fold_dir(wildcards) / FoldFile.PCA
    else:
        inputs["features"] = cohort_sample_files(SampleFile.FEATURES)(wildcards)
    return inputs


def phenotype_inputs(wildcards):
    return feature_inputs(wildcards)


def train_inputs(wildcards, scope=None):
    scope = scope or TRAINING["feature_scope"]
    return (
        feature_inputs(wildcards, scope)
        | {
            "genes": layout.cohort_dir(wildcards.cohort) / CohortFile.GENES,
            "phenotypes": fold_dir(wildcards) / FoldFile.phenotypes(scope),
        }
        | sample_files_inputs(wildcards)
    )


def fold_files(cohort, name):
    """``name`` in every fold folder of ``cohort``."""
    return [layout.fold_dir(cohort, fold) / name for fold in fold_names(cohort)]


def out_of_fold(cohort):
    """A K-fold bulk cohort tests every slide once, so its folds' test predictions pool (summary.py)."""
    return COHORTS[cohort]["level"] == "bulk" and EVALUATION["bulk_folds"] > 1


def out_of_fold_files(name):
    """Input function: ``name`` of every fold of a K-fold bulk cohort, else nothing."""

    def files(wildcards):
        return (
            fold_files(wildcards.cohort, name) if out_of_fold(wildcards.cohort) else []
        )

    return files


def sample_files_inputs(wildcards):
    """Every per-sample file a fold's prediction or baselines read."""
    return {
        name.split(".")[0]: cohort_sample_files(name)(wildcards)
        for name in layout.FOLD_SAMPLE_INPUTS
    }


def predict_inputs(wildcards):
    inputs = feature_inputs(wildcards) | sample_files_inputs(wildcards)
    inputs["model"] = fold_dir(wildcards) / FoldFile.MODEL_DESCRIPTION
    inputs["weights"] = fold_dir(wildcards) / FoldFile.MODEL_WEIGHTS
    return inputs


def baseline_inputs(wildcards):
    inputs = sample_files_inputs(wildcards) | {
        "folds": layout.cohort_dir(wildcards.cohort) / CohortFile.FOLDS,
        "genes": layout.cohort_dir(wildcards.cohort) / CohortFile.GENES,
        "embeddings": cohort_sample_files(SampleFile.EMBEDDINGS)(wildcards),
    }
    if COHORTS[wildcards.cohort].get("generated_by_demo", False):
        inputs["demo"] = DEMO_MANIFEST
    return inputs


def xenium_root_arg(wildcards):
    cohort = COHORTS[wildcards.cohort]
    return f"--xenium-root {cohort['root']}" if cohort["level"] == "xenium" else ""


def demo_truth_arg(wildcards):
    """The demo's planted cell types feed the oracle baseline; real cohorts have none."""
    cohort = COHORTS[wildcards.cohort]
    if not cohort.get("generated_by_demo", False):
        return ""
    root = Path(cohort["root"])
    folder = (
        root / "{sample}" / "truth" if cohort["format"] == "xenium" else root / "truth"
    )
    return f"--truth-pattern {shlex.quote(str(folder / '{sample}_cells.h5ad'))}"


TRANSFER = config["transfer"]
TRANSFER_DIR = layout.transfer_dir()
TRANSFER_PRETRAIN_DIR = layout.transfer_pretrain_dir()
TRANSFER_PAIRS = (
    [tuple(pair) for pair in TRANSFER["pairs"]] if TRANSFER["mode"] != "none" else []
)
for _source, _target in TRANSFER_PAIRS:
    if _source not in COHORTS or _target not in COHORTS:
        raise ValueError(
            f"transfer pair {_source} -> {_target} names a cohort not in `cohorts`"
        )


def transfer_settings(cohort):
    """Settings of a transfer step that trains on ``cohort``, as JSON (the rules quote it for the shell);
    transfer.pretrain/finetune go over them."""
    # Transfer runs on per-sample features whatever the main runs use (see finetune_inputs).
    training = cohort_training(cohort) | {"feature_scope": "sample"}
    return json.dumps(
        {"model": config["model"], "training": training, "transfer": TRANSFER}
    )


def pretrain_settings(wildcards):
    return transfer_settings(wildcards.source)


def finetune_settings(wildcards):
    return transfer_settings(wildcards.target)


def transfer_pretrain_dir(wildcards):
    return layout.transfer_pretrain_dir(wildcards.source, wildcards.target)


def transfer_fold_dir(wildcards):
    return layout.transfer_fold_dir(wildcards.source, wildcards.target, wildcards.fold)


def transfer_fold_files(wildcards, name):
    """``name`` in every fold folder of the transfer run ``wildcards.source`` → ``wildcards.target``."""
    return [
        layout.transfer_fold_dir(wildcards.source, wildcards.target, fold) / name
        for fold in fold_names(wildcards.target)
    ]


def transfer_reference_files(wildcards):
    """The target's own folds' predictions and baselines, re-scored on the transfer's shared genes."""
    return [
        path
        for name in (FoldFile.PREDICTIONS, FoldFile.BASELINE_PREDICTIONS)
        for path in fold_files(wildcards.target, name)
    ]


def _as_cohort(wildcards, cohort):
    """The wildcards of ``cohort``'s own rules for the same fold (transfer rules name two cohorts)."""
    return SimpleNamespace(cohort=cohort, fold=getattr(wildcards, "fold", "fold0"))


def pretrain_inputs(wildcards):
    source = _as_cohort(wildcards, wildcards.source)
    inputs = sample_files_inputs(source) | {
        "features": cohort_sample_files(SampleFile.FEATURES)(source),
        "source_genes": layout.cohort_dir(wildcards.source) / CohortFile.GENES,
        "source_folds": layout.cohort_dir(wildcards.source) / CohortFile.FOLDS,
        "source_sheet": COHORTS[wildcards.source]["samples"],
        "target_folds": layout.cohort_dir(wildcards.target) / CohortFile.FOLDS,
        "target_sheet": COHORTS[wildcards.target]["samples"],
    }
    return inputs


def finetune_inputs(wildcards):
    target = _as_cohort(wildcards, wildcards.target)
    # Transfer works on per-sample features: a PCA basis fitted on one cohort does not describe another.
    inputs = train_inputs(target, "sample")
    inputs["pretrain"] = transfer_pretrain_dir(wildcards) / FoldFile.MODEL_DESCRIPTION
    inputs["target_sheet"] = COHORTS[wildcards.target]["samples"]
    return inputs


def transfer_predict_inputs(wildcards):
    target = _as_cohort(wildcards, wildcards.target)
    inputs = feature_inputs(target, "sample") | sample_files_inputs(target)
    inputs["model"] = transfer_fold_dir(wildcards) / FoldFile.MODEL_DESCRIPTION
    return inputs


PROTOCOLS = {
    "st": "leave-one-out",
    "bulk": (
        f"patient {EVALUATION['bulk_folds']}-fold"
        if EVALUATION["bulk_folds"] > 1
        else "patient split"
    ),
    "xenium": "spatial strips",
}


def cohort_metric_tables(cohort):
    """A cohort's own metric tables: BiTro's and the baselines'."""
    return [
        layout.cohort_dir(cohort) / CohortFile.METRICS,
        layout.cohort_dir(cohort) / CohortFile.BASELINES,
    ]


def transfer_metric_tables(cohort):
    """The metric tables of the transfer runs into ``cohort``."""
    return [
        layout.transfer_dir(source, target) / CohortFile.METRICS
        for source, target in TRANSFER_PAIRS
        if target == cohort
    ]


def cohort_summary_tables(cohort):
    return cohort_metric_tables(cohort) + transfer_metric_tables(cohort)


def demo_summary_inputs(wildcards):
    return {cohort: cohort_summary_tables(cohort) for cohort in EVALUATED}


def demo_summary_args(wildcards):
    specs = []
    for cohort in EVALUATED:
        protocol = PROTOCOLS[COHORTS[cohort]["level"]]
        tables = ",".join(str(t) for t in cohort_summary_tables(cohort))
        specs.append(f"--cohort {shlex.quote(f'{cohort},{protocol},{tables}')}")
    return " ".join(specs)


ABLATIONS = config["ablations"]
ABLATION_DIR = layout.ablation_dir()


def ablation_training(wildcards):
    variant = ABLATIONS["variants"][wildcards.variant].get("training", {})
    return cohort_training(wildcards.cohort) | variant


def ablation_fold_dir(wildcards):
    return layout.ablation_fold_dir(wildcards.variant, wildcards.cohort, wildcards.fold)


def ablation_fold_files(wildcards, name):
    """``name`` in every fold folder of ablation ``wildcards.variant`` of ``wildcards.cohort``."""
    return [
        layout.ablation_fold_dir(wildcards.variant, wildcards.cohort, fold) / name
        for fold in fold_names(wildcards.cohort)
    ]


def ablation_train_inputs(wildcards):
    return train_inputs(wildcards, ablation_training(wildcards)["feature_scope"])


def ablation_predict_inputs(wildcards):
    scope = ablation_training(wildcards)["feature_scope"]
    inputs = feature_inputs(wildcards, scope) | sample_files_inputs(wildcards)
    inputs["model"] = ablation_fold_dir(wildcards) / FoldFile.MODEL_DESCRIPTION
    return inputs


def ablation_tables(cohort):
    """The main run, its transfer runs, then each ablation, all on the same folds."""
    tables = [layout.cohort_dir(cohort) / CohortFile.METRICS]
    return (
        tables
        + transfer_metric_tables(cohort)
        + [
            layout.ablation_dir(variant, cohort) / CohortFile.METRICS
            for variant in ABLATIONS["variants"]
        ]
    )


def ablation_table_inputs(wildcards):
    return {cohort: ablation_tables(cohort) for cohort in ABLATIONS["cohorts"]}


def ablation_table_args(wildcards, protocols=True):
    specs = []
    for cohort in ABLATIONS["cohorts"]:
        protocol = [PROTOCOLS[COHORTS[cohort]["level"]]] if protocols else []
        fields = [cohort, *protocol, *(str(t) for t in ablation_tables(cohort))]
        specs.append(f"--cohort {shlex.quote(','.join(fields))}")
    return " ".join(specs)


def cohort_tables(cohort):
    """What a cohort's own target makes: its metric tables (and everything they need) and figures, or a
    predicted cohort's predictions."""
    if cohort in PREDICTED:
        return predicted_files(cohort)
    return cohort_metric_tables(cohort) + list(plot_files(cohort).values())


def cohort_targets_by_name():
    """Cohorts that get a target of their own name (a name that is already a rule's does not)."""
    taken = {"all", "ablations"} | {r.name for r in workflow.rules}
    return [
        name
        for name in COHORTS
        if name not in taken and re.fullmatch(r"[A-Za-z_]\w*", name)
    ]


def all_targets():
    per_sample = [
        sample_dir(cohort, sample) / name
        for cohort in EVALUATED
        for sample in SAMPLES[cohort].index
        for name in layout.SAMPLE_PRODUCTS
    ]
    cohort_tables = [
        table for cohort in EVALUATED for table in cohort_metric_tables(cohort)
    ]
    transfer_tables = [
        layout.transfer_dir(source, target) / CohortFile.METRICS
        for source, target in TRANSFER_PAIRS
    ]
    summary = [RESULTS / layout.DEMO_SUMMARY] if DEMO_ENABLED else []
    figures = [path for cohort in EVALUATED for path in plot_files(cohort).values()]
    predictions = [path for cohort in PREDICTED for path in predicted_files(cohort)]
    return (
        per_sample + cohort_tables + transfer_tables + summary + figures + predictions
    )
