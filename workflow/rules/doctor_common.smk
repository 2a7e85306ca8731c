# Inputs and settings of the preflight rule (doctor.smk); the stamp the first per-sample rules wait for.
import shlex

DOCTOR = config["doctor"]
DOCTOR_DIR = layout.doctor_dir()


def doctor_stamp(wildcards):
    """The preflight stamp the first per-sample rules wait for (none if doctor.enabled is false)."""
    if not DOCTOR["enabled"]:
        return []
    return DOCTOR_DIR / f"{wildcards.cohort}.ok"


def doctor_inputs(wildcards):
    """Only the demo's manifest, for a demo cohort (its files exist only after it).

    Nothing else, so that the check runs once per cohort: were it to rerun in the same invocation as the
    cohort's jobs, they would all rerun (the sample sheet growing, for one).
    """
    if COHORTS[wildcards.cohort].get("generated_by_demo", False):
        return {"demo": DEMO_MANIFEST}
    return {}


def _pick(section, keys):
    return {key: section[key] for key in keys if key in section}


# The params below take `input`, which makes them "derived" for Snakemake: a change in them does not
# rerun the check (and, through its stamp, every job of the cohort). `snakemake preflight -R doctor`
# checks again with the current settings.
def doctor_settings(wildcards, input):
    """The settings the check reads, as one JSON object for `bitro doctor --config-json`."""
    settings = {
        "cohorts": {wildcards.cohort: COHORTS[wildcards.cohort]},
        "features": _pick(FEATURES, ("encoder", "weights", "weights_sha256", "gpu")),
        "segmentation": _pick(config["segmentation"], ("backend", "path", "cellvit")),
        "crops": _pick(config["crops"], ("mpp",)),
        "training": _pick(TRAINING, ("gpu",)),
        "evaluation": _pick(EVALUATION, ("st_group_by", "bulk_folds", "xenium_strips")),
        "genes": _pick(config["genes"], ("n_genes", "up_to")),
        "doctor": DOCTOR,
        "demo": _pick(DEMO, ("outdir",)),
    }
    return shlex.quote(json.dumps(settings, sort_keys=True, default=str))


def doctor_repo(wildcards, input):
    return shlex.quote(str(REPO))


def doctor_gpu_arg(wildcards, input):
    """On a cluster GPU jobs run on other nodes than the check: a GPU it cannot see only warns."""
    return "" if workflow.local_exec else "--gpu-elsewhere"
