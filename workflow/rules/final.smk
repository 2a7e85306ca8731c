# Issue 16: each cohort's final model, trained on all its samples (the fold `final`, whose folder
# results/{cohort}/final/ is laid out as a fold's: pca.npz, phenotypes, model), and its portable bundle.
# The cohort_pca, phenotypes and train rules make the model; nothing here tests it: the bundle carries
# the cross-validation's metrics (docs/predict.md).


rule final_fold:
    input:
        layout.cohort_dir() / CohortFile.FOLDS,
    output:
        layout.fold_dir(fold=layout.FINAL_FOLD) / CohortFile.FOLDS,
    log:
        LOGS / "final_fold" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "final_fold" / "{cohort}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "bitro final-fold --folds {input} --out {output} > {log} 2>&1"


rule export_model:
    input:
        unpack(export_inputs),
    output:
        bundle=directory(FINAL_DIR / FoldFile.BUNDLE),
        archive=zip_path(FINAL_DIR / FoldFile.BUNDLE),
    log:
        LOGS / "export_model" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "export_model" / "{cohort}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        model_dir=lambda wc: layout.fold_dir(wc.cohort, layout.FINAL_FOLD),
        samples=samples_dir,
        basis=lambda wc, input: (
            f"--basis {input.basis}" if "basis" in input.keys() else ""
        ),
        settings=lambda wc: shlex.quote(json.dumps(bundle_settings(wc.cohort))),
        cohort=lambda wc: shlex.quote(json.dumps(bundle_cohort(wc.cohort))),
    shell:
        "bitro export-model --model-dir {params.model_dir} {params.basis} --samples-dir {params.samples} "
        "--stain-reference {input.reference} --embeddings-description {input.description} "
        "--settings-json {params.settings} --cohort-json {params.cohort} --cv-metrics {input.metrics} "
        "--gene-pcc {input.gene_pcc} "
        "--out {output.bundle} > {log} 2>&1"


# A transfer run's final model: the pretrained model fine-tuned on the target's final fold
# (transfer_finetune with fold `final`), bundled with the transfer's table.
rule export_transfer_model:
    input:
        unpack(export_transfer_inputs),
    output:
        bundle=directory(TRANSFER_DIR / layout.FINAL_FOLD / FoldFile.BUNDLE),
        archive=zip_path(TRANSFER_DIR / layout.FINAL_FOLD / FoldFile.BUNDLE),
    log:
        LOGS / "export_transfer_model" / "{source}_to_{target}.log",
    benchmark:
        BENCHMARKS / "export_transfer_model" / "{source}_to_{target}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        model_dir=lambda wc: layout.transfer_fold_dir(
            wc.source, wc.target, layout.FINAL_FOLD
        ),
        samples=lambda wc: layout.samples_dir(wc.target),
        settings=lambda wc: shlex.quote(
            json.dumps(transfer_bundle_settings(wc.source, wc.target))
        ),
        cohort=lambda wc: shlex.quote(
            json.dumps(transfer_bundle_cohort(wc.source, wc.target))
        ),
    shell:
        "bitro export-model --model-dir {params.model_dir} --samples-dir {params.samples} "
        "--stain-reference {input.reference} --embeddings-description {input.description} "
        "--settings-json {params.settings} --cohort-json {params.cohort} --cv-metrics {input.metrics} "
        "--out {output.bundle} > {log} 2>&1"


rule final:
    input:
        [zip_path(final_bundle(name)) for name in (*EVALUATED, *TRANSFER_RUNS)],
    localrule: True
