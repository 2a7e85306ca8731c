# Issue 16: cohorts predicted by a bundle (a `bundle:` key; `format: slides` cohorts have no expression).
# Their samples go through the same per-sample rules with the bundle's settings (predict_common.smk), are
# projected on the bundle's PCA basis and predicted; results/{cohort}/predictions/{sample}/ gets the maps.
for _cohort in PREDICTED:
    check_bundle_features(_cohort)


rule unpack_bundle:
    input:
        lambda wc: repo_path(COHORTS[wc.cohort]["bundle"]),
    output:
        bundle=directory(layout.cohort_dir() / FoldFile.BUNDLE),
        reference=layout.cohort_dir() / BundleFile.STAIN_REFERENCE,
    log:
        LOGS / "unpack_bundle" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "unpack_bundle" / "{cohort}.tsv"
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        reference=BundleFile.STAIN_REFERENCE,
    shell:
        "(python -m zipfile -e {input} {output.bundle} && "
        "cp {output.bundle}/{params.reference} {output.reference}) > {log} 2>&1"


rule predict_slide:
    input:
        unpack(predict_slide_inputs),
    output:
        **{key: PREDICTION_DIR / name for key, name in PREDICTED_SLIDE_FILES.items()},
        maps=directory(PREDICTION_DIR / PredictionFile.MAPS),
    log:
        LOGS / "predict_slide" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "predict_slide" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=TRAINING["gpu"],
    params:
        sample=sample_args,
        sample_dir=lambda wc: sample_dir(wc.cohort, wc.sample),
        out_dir=lambda wc: layout.predictions_dir(wc.cohort, wc.sample),
        genes=predict_genes_arg,
    shell:
        "bitro predict-sample --bundle {input.bundle} --sample-dir {params.sample_dir} {params.sample} "
        "{params.genes} --out-dir {params.out_dir} > {log} 2>&1"


rule predicted_profiles:
    input:
        lambda wc: predicted_slide_files(wc.cohort, PredictionFile.PROFILE),
    output:
        layout.predictions_dir(sample=None) / layout.PREDICTED_PROFILES,
    log:
        LOGS / "predicted_profiles" / "{cohort}.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "bitro predictions-table --profiles {input} --out {output} > {log} 2>&1"


rule predictions:
    input:
        [path for cohort in PREDICTED for path in predicted_files(cohort)],
    localrule: True
