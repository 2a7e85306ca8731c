# Paper section 3.3-3.4 and Appendix C.2: train BiTro on each fold of each cohort.


rule train:
    input:
        unpack(train_inputs),
    output:
        model=FOLD_DIR / FoldFile.MODEL_WEIGHTS,
        description=FOLD_DIR / FoldFile.MODEL_DESCRIPTION,
        log_csv=FOLD_DIR / FoldFile.TRAIN_LOG,
    log:
        LOGS / "train" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "train" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=TRAINING["gpu"],
    params:
        samples_dir=samples_dir,
        out_dir=fold_dir,
        scope=TRAINING["feature_scope"],
        basis=lambda wc, input: (
            f"--basis {input.basis}" if "basis" in input.keys() else ""
        ),
        zscore="" if TRAINING["zscore"] else "--no-zscore",
        settings=training_settings,
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro train --samples-dir {params.samples_dir} --folds {input.folds} --fold {wildcards.fold} "
        "--genes {input.genes} --phenotypes {input.phenotypes} --scope {params.scope} {params.basis} "
        "{params.zscore} --params-json {params.settings:q} --device {params.device} --quiet --threads {threads} "
        "--out-dir {params.out_dir} > {log} 2>&1"
