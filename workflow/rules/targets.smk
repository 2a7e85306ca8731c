# Measured expression per unit: ST spot counts, Xenium pseudo-spots, bulk TPM.


rule targets:
    input:
        unpack(sample_inputs),
        units=SAMPLE_DIR / SampleFile.UNITS,
    output:
        SAMPLE_DIR / SampleFile.TARGETS,
    log:
        LOGS / "targets" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "targets" / "{cohort}" / "{sample}.tsv"
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
