# Per cohort and fold: genes (Appendix B), folds (section 4), cohort PCA and phenotypes (section 3.2).


rule genes:
    input:
        targets=cohort_targets,
        gene_list=gene_list_input,
    output:
        COHORT_DIR / CohortFile.GENES,
    log:
        LOGS / "genes" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "genes" / "{cohort}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        level=lambda wc: COHORTS[wc.cohort]["level"],
        gene_list=lambda wc, input: (
            f"--gene-list {input.gene_list}" if input.gene_list else ""
        ),
        n_genes=config["genes"]["n_genes"],
        n_hvg=config["genes"]["n_hvg"],
        up_to="--up-to" if config["genes"]["up_to"] else "",
    shell:
        "bitro genes --targets {input.targets} --level {params.level} {params.gene_list} "
        "--n-genes {params.n_genes} --n-hvg {params.n_hvg} {params.up_to} --out {output} > {log} 2>&1"


rule folds:
    input:
        sheet=lambda wc: COHORTS[wc.cohort]["samples"],
        cells=fold_cells_inputs,
    output:
        COHORT_DIR / CohortFile.FOLDS,
    log:
        LOGS / "folds" / "{cohort}.log",
    benchmark:
        BENCHMARKS / "folds" / "{cohort}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        level=lambda wc: COHORTS[wc.cohort]["level"],
        group_by=lambda wc: st_group_by(wc.cohort),
        test_fraction=EVALUATION["bulk_test_fraction"],
        bulk_folds=EVALUATION["bulk_folds"],
        n_strips=EVALUATION["xenium_strips"],
        seed=EVALUATION["seed"],
        samples_dir=samples_dir,
    shell:
        "bitro folds --cohort {wildcards.cohort} --level {params.level} --sample-sheet {input.sheet} "
        "--group-by {params.group_by} --test-fraction {params.test_fraction} "
        "--bulk-folds {params.bulk_folds} "
        "--n-strips {params.n_strips} --seed {params.seed} --samples-dir {params.samples_dir} "
        "--out {output} > {log} 2>&1"


rule cohort_pca:
    input:
        folds=folds_file,
        embeddings=cohort_sample_files(SampleFile.EMBEDDINGS),
    output:
        FOLD_DIR / FoldFile.PCA,
    log:
        LOGS / "cohort_pca" / "{cohort}" / "{fold}.log",
    benchmark:
        BENCHMARKS / "cohort_pca" / "{cohort}" / "{fold}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        samples_dir=samples_dir,
        n_components=FEATURES["n_components"],
        seed=EVALUATION["seed"],
    shell:
        "bitro cohort-pca --folds {input.folds} --fold {wildcards.fold} "
        "--samples-dir {params.samples_dir} --n-components {params.n_components} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule phenotypes:
    input:
        unpack(phenotype_inputs),
    output:
        FOLD_DIR / FoldFile.phenotypes(),
    log:
        LOGS / "phenotypes" / "{cohort}" / "{fold}_{scope}.log",
    benchmark:
        BENCHMARKS / "phenotypes" / "{cohort}" / "{fold}_{scope}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        samples_dir=samples_dir,
        basis=lambda wc, input: (
            f"--basis {input.basis}" if "basis" in input.keys() else ""
        ),
        k=TRAINING["phenotypes_k"],
        seed=EVALUATION["seed"],
    shell:
        "bitro phenotypes --folds {input.folds} --fold {wildcards.fold} "
        "--samples-dir {params.samples_dir} {params.basis} --k {params.k} --seed {params.seed} "
        "--out {output} > {log} 2>&1"
