rule units:
    input:
        unpack(sample_inputs),
    output:
        RESULTS / "{cohort}" / "samples" / "{sample}" / "units.parquet",
    log:
        LOGS / "units" / "{cohort}" / "{sample}.log",
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        sample=sample_args,
        patch=config["units"]["patch_size_um"],
        tissue=config["units"]["min_tissue_fraction"],
        mask_mpp=config["units"]["mask_mpp"],
    shell:
        "bitro units {params.sample} --patch-size-um {params.patch} "
        "--min-tissue-fraction {params.tissue} --mask-mpp {params.mask_mpp} "
        "--out {output} > {log} 2>&1"


rule targets:
    input:
        unpack(sample_inputs),
        units=RESULTS / "{cohort}" / "samples" / "{sample}" / "units.parquet",
    output:
        RESULTS / "{cohort}" / "samples" / "{sample}" / "targets.h5ad",
    log:
        LOGS / "targets" / "{cohort}" / "{sample}.log",
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        sample=sample_args,
    shell:
        "bitro targets {params.sample} --units {input.units} --out {output} > {log} 2>&1"
