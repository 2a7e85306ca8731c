# Paper section 4 and docs/methods.md: each fold's test samples, the baselines, cohort tables.


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predictions=FOLD_DIR / FoldFile.PREDICTIONS,
        cells=FOLD_DIR / FoldFile.CELL_PREDICTIONS,
        metrics=FOLD_DIR / FoldFile.METRICS,
    log:
        LOGS / "predict" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "predict" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=TRAINING["gpu"],
    params:
        samples_dir=samples_dir,
        model_dir=fold_dir,
        out_dir=fold_dir,
        xenium=xenium_root_arg,
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro predict --samples-dir {params.samples_dir} --model-dir {params.model_dir} "
        "--folds {input.folds} --fold {wildcards.fold} {params.xenium} --device {params.device} --threads {threads} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule baselines:
    input:
        unpack(baseline_inputs),
    output:
        metrics=FOLD_DIR / FoldFile.BASELINES,
        predictions=FOLD_DIR / FoldFile.BASELINE_PREDICTIONS,
    log:
        LOGS / "baselines" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "baselines" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        samples_dir=samples_dir,
        truth=demo_truth_arg,
        mlp_epochs=config["baselines"]["mlp_epochs"],
        seed=EVALUATION["seed"],
    shell:
        "bitro baselines --samples-dir {params.samples_dir} --folds {input.folds} "
        "--fold {wildcards.fold} --genes {input.genes} {params.truth} "
        "--mlp-epochs {params.mlp_epochs} --seed {params.seed} --out {output.metrics} "
        "--predictions-out {output.predictions} > {log} 2>&1"


rule cohort_metrics:
    input:
        metrics=lambda wc: fold_files(wc.cohort, FoldFile.METRICS),
        baselines=lambda wc: fold_files(wc.cohort, FoldFile.BASELINES),
        predictions=out_of_fold_files(FoldFile.PREDICTIONS),
        baseline_predictions=out_of_fold_files(FoldFile.BASELINE_PREDICTIONS),
    output:
        metrics=COHORT_DIR / CohortFile.METRICS,
        baselines=COHORT_DIR / CohortFile.BASELINES,
    log:
        LOGS / "cohort_metrics" / "{cohort}.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "bitro summarise --metrics {input.metrics} --baselines {input.baselines} "
        "--predictions {input.predictions} --baseline-predictions {input.baseline_predictions} "
        "--out {output.metrics} --baselines-out {output.baselines} > {log} 2>&1"


rule demo_summary:
    input:
        unpack(demo_summary_inputs),
    output:
        RESULTS / layout.DEMO_SUMMARY,
    log:
        LOGS / "demo_summary.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cohorts=demo_summary_args,
    shell:
        "bitro demo-summary {params.cohorts} --out {output} > {log} 2>&1"
