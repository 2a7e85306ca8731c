# Preflight (`bitro doctor`): package versions, weights and their sha256, GPU, and every sample's files,
# slide and µm/px, once per cohort. The cohort's first per-sample jobs (tissue, cellvit_script) wait for
# its stamp, so a bad cohort fails in seconds rather than hours into segmentation.
# The check runs when its report is missing; `snakemake preflight` runs the checks of every cohort and
# nothing else, and `snakemake preflight -R doctor` checks again (the stamp's content never changes, so
# rewriting it reruns nothing). See docs/doctor.md.


include: "doctor_common.smk"


rule doctor:
    input:
        unpack(doctor_inputs),
    output:
        report=DOCTOR_DIR / "{cohort}.txt",
        stamp=DOCTOR_DIR / "{cohort}.ok",
    log:
        LOGS / "doctor" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "doctor" / "{cohort}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        settings=doctor_settings,
        repo=doctor_repo,
        gpu=doctor_gpu_arg,
    shell:
        "bitro doctor --config-json {params.settings} --cohort {wildcards.cohort} --repo {params.repo} "
        "{params.gpu} --out {output.report} --stamp {output.stamp} > {log} 2>&1 "
        # On failure the problems also go to the console, not only to the log.
        "|| (sed '1,/^problems/d' {log} >&2; exit 1)"


rule preflight:
    input:
        [DOCTOR_DIR / f"{cohort}.txt" for cohort in COHORTS],
    localrule: True
