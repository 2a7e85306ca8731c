# Paper section 3.5: pretrain on one level, fine-tune on the other (full or LoRA), genes matched by name.
# A transfer predicts the genes its two cohorts share: its metrics.tsv also scores the target's own BiTro
# and baselines on those genes (bitro.evaluate.summary.summarise_transfer).


rule transfer_pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        model=TRANSFER_PRETRAIN_DIR / FoldFile.MODEL_WEIGHTS,
        description=TRANSFER_PRETRAIN_DIR / FoldFile.MODEL_DESCRIPTION,
    log:
        LOGS / "transfer_pretrain" / "{source}_to_{target}.log",
    benchmark:
        BENCHMARKS / "transfer_pretrain" / "{source}_to_{target}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=TRAINING["gpu"],
    params:
        source_samples=lambda wc: layout.samples_dir(wc.source),
        out_dir=transfer_pretrain_dir,
        zscore="" if TRAINING["zscore"] else "--no-zscore",
        settings=pretrain_settings,
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro transfer-pretrain --source-samples-dir {params.source_samples} "
        "--source-genes {input.source_genes} --source-sheet {input.source_sheet} "
        "--source-folds {input.source_folds} --target-folds {input.target_folds} "
        "--target-sheet {input.target_sheet} {params.zscore} --params-json {params.settings:q} "
        "--device {params.device} --quiet --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule transfer_finetune:
    input:
        unpack(finetune_inputs),
    output:
        model=TRANSFER_DIR / "{fold}" / FoldFile.MODEL_WEIGHTS,
        description=TRANSFER_DIR / "{fold}" / FoldFile.MODEL_DESCRIPTION,
    log:
        LOGS / "transfer" / "{source}_to_{target}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "transfer" / "{source}_to_{target}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=24 * 60,
        gpu=TRAINING["gpu"],
    params:
        pretrain_dir=transfer_pretrain_dir,
        target_samples=lambda wc: layout.samples_dir(wc.target),
        out_dir=transfer_fold_dir,
        mode=TRANSFER["mode"],
        zscore="" if TRAINING["zscore"] else "--no-zscore",
        settings=finetune_settings,
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro transfer --pretrain-dir {params.pretrain_dir} --target-samples-dir {params.target_samples} "
        "--target-folds {input.folds} --fold {wildcards.fold} --target-genes {input.genes} "
        "--target-sheet {input.target_sheet} --phenotypes {input.phenotypes} --mode {params.mode} "
        "{params.zscore} --params-json {params.settings:q} --device {params.device} --quiet --threads {threads} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule transfer_predict:
    input:
        unpack(transfer_predict_inputs),
    output:
        predictions=TRANSFER_DIR / "{fold}" / FoldFile.PREDICTIONS,
        cells=TRANSFER_DIR / "{fold}" / FoldFile.CELL_PREDICTIONS,
        metrics=TRANSFER_DIR / "{fold}" / FoldFile.METRICS,
    log:
        LOGS / "transfer_predict" / "{source}_to_{target}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "transfer_predict" / "{source}_to_{target}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=TRAINING["gpu"],
    params:
        target_samples=lambda wc: layout.samples_dir(wc.target),
        model_dir=transfer_fold_dir,
        xenium=lambda wc: xenium_root_arg(_as_cohort(wc, wc.target)),
        name=f"bitro_transfer_{TRANSFER['mode']}",
        device="cuda" if TRAINING["gpu"] else "cpu",
    shell:
        "bitro predict --samples-dir {params.target_samples} --model-dir {params.model_dir} "
        "--folds {input.folds} --fold {wildcards.fold} {params.xenium} --model-name {params.name} "
        "--device {params.device} --threads {threads} --out-dir {params.model_dir} > {log} 2>&1"


rule transfer_metrics:
    input:
        metrics=lambda wc: transfer_fold_files(wc, FoldFile.METRICS),
        predictions=lambda wc: transfer_fold_files(wc, FoldFile.PREDICTIONS),
        reference=transfer_reference_files,
    output:
        TRANSFER_DIR / CohortFile.METRICS,
    log:
        LOGS / "transfer_metrics" / "{source}_to_{target}.log",
    localrule: True
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out_of_fold=lambda wc: "--out-of-fold" if out_of_fold(wc.target) else "",
    shell:
        "bitro transfer-summary --metrics {input.metrics} --predictions {input.predictions} "
        "--reference {input.reference} {params.out_of_fold} --out {output} > {log} 2>&1"
