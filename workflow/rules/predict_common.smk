# Glue of final.smk and predict.smk: what a bundle is exported with, where a predicted cohort's bundle is,
# and the settings it carries. A predicted cohort's samples are made with its bundle's settings: those of
# the per-sample rules are taken from the bundle (cohort_setting), those that are the run's alone (the
# encoder and how it embeds) must match it, checked when the workflow is parsed.
import zipfile

from bitro.bundle import BundleFile, zip_path
from bitro.predict.slide import PredictionFile

FINAL_DIR = layout.fold_dir(fold=layout.FINAL_FOLD)
PREDICTION_DIR = layout.predictions_dir()
PREDICT = config["predict"]
#: The per-slide files of predict-sample that are rule outputs (the heat maps are a folder beside them).
PREDICTED_SLIDE_FILES = {
    "spots": PredictionFile.SPOTS,
    "cells": PredictionFile.CELLS,
    "geojson": PredictionFile.CELLS_GEOJSON,
    "profile": PredictionFile.PROFILE,
}
#: The config sections a bundle records and the per-sample rules read per cohort.
PER_SAMPLE_SECTIONS = ("tissue", "units", "stain", "crops")
#: Settings of the run's features that a predicted cohort's bundle must share (features.smk is global).
SHARED_FEATURE_KEYS = ("encoder", "image_size", "pooling", "mode", "graph_k")


def export_inputs(wildcards):
    """A final model's files, the stain reference, a training sample's embedding record, the CV metrics."""
    final = layout.fold_dir(wildcards.cohort, layout.FINAL_FOLD)
    first = SAMPLES[wildcards.cohort].index[0]
    inputs = {
        "weights": final / FoldFile.MODEL_WEIGHTS,
        "model": final / FoldFile.MODEL_DESCRIPTION,
        "reference": STAIN_REFERENCE,
        "description": sample_dir(wildcards.cohort, first)
        / SampleFile.EMBEDDINGS_DESCRIPTION,
        "metrics": layout.cohort_dir(wildcards.cohort) / CohortFile.METRICS,
        "gene_pcc": plot_files(wildcards.cohort)["pcc_table"],
        # counted into the bundle's cohort summary
        "units": cohort_sample_files(SampleFile.UNITS)(wildcards),
        "cells": cohort_sample_files(SampleFile.CELLS)(wildcards),
    }
    if TRAINING["feature_scope"] == "cohort":
        inputs["basis"] = final / FoldFile.PCA
    return inputs


def bundle_settings(cohort):
    """The settings a cohort's features and model were made with, as its bundle records them."""
    stain = {key: value for key, value in config["stain"].items() if key != "target"}
    return {
        "tissue": config["tissue"],
        "units": config["units"],
        "stain": stain,
        "segmentation": segmentation(cohort),
        "crops": config["crops"],
        "features": FEATURES | {"mode": EMBED_MODE},
        "genes": config["genes"],
        "model": config["model"],
        "training": cohort_training(cohort),
    }


def bundle_cohort(cohort):
    """The training cohort's summary in its bundle: samples, patients and the CV protocol."""
    sheet = SAMPLES[cohort]
    level = COHORTS[cohort]["level"]
    patients = sheet["patient_id"].dropna() if "patient_id" in sheet else sheet.index
    return {
        "name": cohort,
        "level": level,
        "format": COHORTS[cohort]["format"],
        "samples": sheet.index.tolist(),
        "n_samples": len(sheet),
        "n_patients": int(pd.Series(patients).nunique()),
        "protocol": PROTOCOLS[level],
    }


#: Transfer runs of this config by name ({source}_to_{target}): each gets a final model and a bundle.
TRANSFER_RUNS = {layout.transfer_name(s, t): (s, t) for s, t in TRANSFER_PAIRS}


def final_bundle(name):
    """The bundle folder of the final model of a cohort or a transfer run of this config."""
    if name in TRANSFER_RUNS:
        source, target = TRANSFER_RUNS[name]
        folder = layout.transfer_fold_dir(source, target, layout.FINAL_FOLD)
    else:
        folder = layout.fold_dir(name, layout.FINAL_FOLD)
    return folder / FoldFile.BUNDLE


def made_here(cohort):
    """Whether a predicted cohort's bundle is made by this run (a cohort's or a transfer's final model)."""
    return COHORTS[cohort]["bundle"] in (*EVALUATED, *TRANSFER_RUNS)


def export_transfer_inputs(wildcards):
    """A transfer run's final model, the stain reference, a target sample's embedding record, its table."""
    final = layout.transfer_fold_dir(
        wildcards.source, wildcards.target, layout.FINAL_FOLD
    )
    first = SAMPLES[wildcards.target].index[0]
    target = SimpleNamespace(cohort=wildcards.target)
    return {
        "weights": final / FoldFile.MODEL_WEIGHTS,
        "model": final / FoldFile.MODEL_DESCRIPTION,
        "reference": STAIN_REFERENCE,
        "description": sample_dir(wildcards.target, first)
        / SampleFile.EMBEDDINGS_DESCRIPTION,
        "metrics": layout.transfer_dir(wildcards.source, wildcards.target)
        / CohortFile.METRICS,
        "units": cohort_sample_files(SampleFile.UNITS)(target),
        "cells": cohort_sample_files(SampleFile.CELLS)(target),
    }


def transfer_bundle_settings(source, target):
    """A transfer run's bundle settings: the target's, with the transfer's training (per-sample features)."""
    return bundle_settings(target) | json.loads(transfer_settings(target))


def transfer_bundle_cohort(source, target):
    return bundle_cohort(target) | {"transfer_from": source}


def bundle_path(cohort):
    """Where a predicted cohort's bundle folder is: a final bundle of this run, the folder named, or the
    named zip unpacked into results/{cohort}/bundle."""
    source = COHORTS[cohort]["bundle"]
    if made_here(cohort):
        return final_bundle(source)
    path = repo_path(source)
    return (
        layout.cohort_dir(cohort) / FoldFile.BUNDLE if path.suffix == ".zip" else path
    )


def _read_bundle_record(cohort):
    """An existing bundle's bundle.json (None for a bundle this run makes), read when the workflow is
    parsed; a bundle path that is neither a cohort of this run nor a bundle stops it."""
    source = COHORTS[cohort]["bundle"]
    if made_here(cohort):
        return None
    if source in COHORTS:
        raise ValueError(
            f"cohort {cohort!r}: bundle {source!r} is a predicted cohort, not one that trains"
        )
    path = repo_path(source)
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read(BundleFile.RECORD))
        return json.loads((path / BundleFile.RECORD).read_text())
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(
            f"cohort {cohort!r}: bundle {path} is not a bitro model bundle "
            f"(no readable {BundleFile.RECORD}: {exc}); a bundle is a cohort of this config "
            "or the folder/zip `bitro export-model` writes"
        ) from exc


BUNDLE_RECORDS = {cohort: _read_bundle_record(cohort) for cohort in PREDICTED}


def check_bundle_features(cohort):
    """Stop on a predicted cohort whose bundle was embedded otherwise than this run embeds (predict.smk
    calls it once embedding.smk has resolved the mode)."""
    record = BUNDLE_RECORDS[cohort]
    if record is None:
        return
    made = record["settings"]["features"]
    ours = FEATURES | {"mode": EMBED_MODE}
    for key in SHARED_FEATURE_KEYS:
        if made.get(key) != ours.get(key):
            raise ValueError(
                f"cohort {cohort!r}: its bundle {COHORTS[cohort]['bundle']} was embedded with "
                f"features.{key} = {made.get(key)!r}, this config has {ours.get(key)!r}; set "
                f"features.{key} to the bundle's (the encoder's weights are checked by sha256)"
            )


def cohort_setting(cohort, section):
    """A config section as a cohort's per-sample rules use it: a predicted cohort's bundle's over the run's."""
    record = BUNDLE_RECORDS.get(cohort)
    if record is None:
        return config[section]
    return config[section] | record["settings"].get(section, {})


def stain_reference_input(wildcards):
    """The stain reference a sample is mapped to: a predicted cohort's bundle's, else the run's (which a
    bundle of this run carries)."""
    cohort = wildcards.cohort
    if cohort not in PREDICTED or made_here(cohort):
        return STAIN_REFERENCE
    path = repo_path(COHORTS[cohort]["bundle"])
    if path.suffix == ".zip":
        return layout.cohort_dir(cohort) / BundleFile.STAIN_REFERENCE
    return path / BundleFile.STAIN_REFERENCE


def predicted_slide_files(cohort, name):
    return [
        layout.predictions_dir(cohort, sample) / name
        for sample in SAMPLES[cohort].index
    ]


def predicted_files(cohort):
    """What a predicted cohort's target makes: every slide's files and the cohort's bulk.tsv."""
    return [
        path
        for name in PREDICTED_SLIDE_FILES.values()
        for path in predicted_slide_files(cohort, name)
    ] + [layout.predictions_dir(cohort, None) / layout.PREDICTED_PROFILES]


def predict_slide_inputs(wildcards):
    """The bundle and the sample's cells, graph, units and embeddings (features.npy in sample scope)."""
    folder = sample_dir(wildcards.cohort, wildcards.sample)
    inputs = sample_inputs(wildcards) | {
        "bundle": bundle_path(wildcards.cohort),
        "cells": folder / SampleFile.CELLS,
        "graph": folder / SampleFile.GRAPH,
        "units": folder / SampleFile.UNITS,
        "embeddings": folder / SampleFile.EMBEDDINGS,
        "description": folder / SampleFile.EMBEDDINGS_DESCRIPTION,
    }
    if bundle_scope(wildcards.cohort) == "sample":
        inputs["features"] = folder / SampleFile.FEATURES
    return inputs


def bundle_scope(cohort):
    """The feature scope of a predicted cohort's bundle: `cohort` projects the embeddings on the bundle's
    basis, `sample` reads each sample's own PCA (features.npy; transfer runs train on those).
    """
    record = BUNDLE_RECORDS[cohort]
    if record is not None:
        return record["features"]["scope"]
    if COHORTS[cohort]["bundle"] in TRANSFER_RUNS:
        return "sample"
    return TRAINING["feature_scope"]


def predict_genes_arg(wildcards):
    """The genes of the QuPath measurements and heat maps: predict.genes, else the bundle's best."""
    if PREDICT["genes"]:
        return f"--genes {shlex.quote(','.join(PREDICT['genes']))}"
    return f"--n-genes {PREDICT['n_genes']}"
