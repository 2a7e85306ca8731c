# Paper Tables 7-8: the same folds trained without the cluster loss, without target normalisation,
# and (from the transfer rules) without transfer; `snakemake ablations` runs them and writes the table.


rule train_ablation:
    input:
        unpack(ablation_train_inputs),
    output:
        model=ABLATION_DIR / "{fold}" / FoldFile.MODEL_WEIGHTS,
        description=ABLATION_DIR / "{fold}" / FoldFile.MODEL_DESCRIPTION,
    log:
        LOGS / "train_ablation" / "{variant}" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "train_ablation" / "{variant}" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=TRAINING["gpu"],
    params:
        samples_dir=samples_dir,
        out_dir=ablation_fold_dir,
        scope=lambda wc: ablation_training(wc)["feature_scope"],
        basis=lambda wc, input: (
            f"--basis {input.basis}" if "basis" in input.keys() else ""
        ),
        zscore=lambda wc: "" if ablation_training(wc)["zscore"] else "--no-zscore",
        settings=lambda wc: json.dumps(
            {"model": config["model"], "training": ablation_training(wc)}
        ),
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro train --samples-dir {params.samples_dir} --folds {input.folds} --fold {wildcards.fold} "
        "--genes {input.genes} --phenotypes {input.phenotypes} --scope {params.scope} {params.basis} "
        "{params.zscore} --params-json {params.settings:q} --device {params.device} --quiet --threads {threads} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule predict_ablation:
    input:
        unpack(ablation_predict_inputs),
    output:
        metrics=ABLATION_DIR / "{fold}" / FoldFile.METRICS,
        predictions=ABLATION_DIR / "{fold}" / FoldFile.PREDICTIONS,
        cells=ABLATION_DIR / "{fold}" / FoldFile.CELL_PREDICTIONS,
    log:
        LOGS / "predict_ablation" / "{variant}" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "predict_ablation" / "{variant}" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        samples_dir=samples_dir,
        model_dir=ablation_fold_dir,
        xenium=xenium_root_arg,
        name=lambda wc: f"bitro_{wc.variant}",
    shell:
        "bitro predict --samples-dir {params.samples_dir} --model-dir {params.model_dir} "
        "--folds {input.folds} --fold {wildcards.fold} {params.xenium} --model-name {params.name} "
        "--threads {threads} --out-dir {params.model_dir} > {log} 2>&1"


rule ablation_metrics:
    input:
        metrics=lambda wc: ablation_fold_files(wc, FoldFile.METRICS),
        predictions=lambda wc: (
            ablation_fold_files(wc, FoldFile.PREDICTIONS)
            if out_of_fold(wc.cohort)
            else []
        ),
    output:
        ABLATION_DIR / CohortFile.METRICS,
    log:
        LOGS / "ablation_metrics" / "{variant}" / "{cohort}.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "bitro summarise --metrics {input.metrics} --predictions {input.predictions} "
        "--out {output} > {log} 2>&1"


rule ablations:
    input:
        unpack(ablation_table_inputs),
    output:
        table=layout.ablations_dir() / layout.ABLATION_TABLE,
        long=layout.ablations_dir() / layout.ABLATION_TABLE_LONG,
    log:
        LOGS / "ablations.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cohorts=ablation_table_args,
        tables=lambda wc: ablation_table_args(wc, protocols=False),
    shell:
        "(bitro demo-summary {params.cohorts} --out {output.long} && "
        "bitro ablation-table {params.tables} --out {output.table}) > {log} 2>&1"
