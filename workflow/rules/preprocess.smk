# Paper §3.1–3.2, Appendix B: tissue, units, stain normalisation, cells and their crops, per sample.


rule tissue:
    input:
        unpack(sample_inputs),
        doctor=doctor_stamp,
    output:
        mask=SAMPLE_DIR / SampleFile.TISSUE,
        geojson=SAMPLE_DIR / SampleFile.TISSUE_GEOJSON,
    log:
        LOGS / "tissue" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "tissue" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        sample=sample_args,
        mask_mpp=lambda wc: cohort_setting(wc.cohort, "tissue")["mask_mpp"],
    shell:
        "bitro tissue {params.sample} --mask-mpp {params.mask_mpp} "
        "--geojson {output.geojson} --out {output.mask} > {log} 2>&1"


rule units:
    input:
        unpack(sample_inputs),
        tissue=SAMPLE_DIR / SampleFile.TISSUE,
    output:
        SAMPLE_DIR / SampleFile.UNITS,
    log:
        LOGS / "units" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "units" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        sample=sample_args,
        patch=lambda wc: cohort_setting(wc.cohort, "units")["patch_size_um"],
        tissue=lambda wc: cohort_setting(wc.cohort, "units")["min_tissue_fraction"],
    shell:
        "bitro units {params.sample} --tissue {input.tissue} --patch-size-um {params.patch} "
        "--min-tissue-fraction {params.tissue} --out {output} > {log} 2>&1"


if not STAIN_TARGET_IS_REFERENCE:

    rule stain_reference:
        input:
            STAIN_TARGET,
        output:
            STAIN_REFERENCE,
        log:
            LOGS / "stain_reference.log",
        benchmark:
            BENCHMARKS / "stain_reference.tsv"
        conda:
            "../../envs/bitro.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=20,
        shell:
            "bitro stain-reference --image {input} --out {output} > {log} 2>&1"


rule stain:
    input:
        unpack(sample_inputs),
        tissue=SAMPLE_DIR / SampleFile.TISSUE,
        reference=stain_reference_input,
    output:
        SAMPLE_DIR / SampleFile.STAIN,
    log:
        LOGS / "stain" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "stain" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        sample=sample_args,
        method=lambda wc: cohort_setting(wc.cohort, "stain")["method"],
        fit_mpp=lambda wc: cohort_setting(wc.cohort, "stain")["fit_mpp"],
        n_tiles=lambda wc: cohort_setting(wc.cohort, "stain")["n_tiles"],
    shell:
        "bitro stain {params.sample} --tissue {input.tissue} --reference {input.reference} "
        "--method {params.method} --fit-mpp {params.fit_mpp} --n-tiles {params.n_tiles} "
        "--out {output} > {log} 2>&1"


rule cellvit_script:
    input:
        unpack(sample_inputs),
        doctor=doctor_stamp,
        model=CELLVIT_MODEL,
    output:
        SAMPLE_DIR / SampleFile.CELLVIT_SCRIPT,
    log:
        LOGS / "cellvit_script" / "{cohort}" / "{sample}.log",
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        sample=sample_args,
        outdir=lambda wc: sample_dir(wc.cohort, wc.sample) / SampleFile.CELLVIT_OUTPUT,
        taxonomy=CELLVIT["taxonomy"],
        batch=CELLVIT["batch_size"],
    shell:
        "bitro cellvit-script {params.sample} --model {input.model} --outdir {params.outdir} "
        "--taxonomy {params.taxonomy} --batch-size {params.batch} --out {output} > {log} 2>&1"


rule segment_cellvit:
    input:
        unpack(sample_inputs),
        script=SAMPLE_DIR / SampleFile.CELLVIT_SCRIPT,
    output:
        directory(SAMPLE_DIR / SampleFile.CELLVIT_OUTPUT),
    log:
        LOGS / "segment_cellvit" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "segment_cellvit" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/cellvit.yaml"
    threads: 8
    resources:
        mem_mb=64000,
        runtime=240,
        gpu=1,
    shell:
        "bash {input.script} > {log} 2>&1"


rule cells:
    input:
        unpack(cells_inputs),
    output:
        **cells_outputs(),
    log:
        LOGS / "cells" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "cells" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        sample=sample_args,
        segmentation=segmentation_args,
        geojson=geojson_arg,
    shell:
        "bitro cells {params.sample} --tissue {input.tissue} --units {input.units} "
        "{params.segmentation} --workers {threads} {params.geojson} "
        "--out {output.cells} > {log} 2>&1"


rule crops:
    input:
        unpack(sample_inputs),
        cells=SAMPLE_DIR / SampleFile.CELLS,
        stain=SAMPLE_DIR / SampleFile.STAIN,
    output:
        crops_output(),
    log:
        LOGS / "crops" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "crops" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        sample=sample_args,
        size=lambda wc: cohort_setting(wc.cohort, "crops")["size"],
        mpp=lambda wc: cohort_setting(wc.cohort, "crops")["mpp"],
    shell:
        "bitro crops {params.sample} --cells {input.cells} --stain {input.stain} "
        "--size {params.size} --crop-mpp {params.mpp} --workers {threads} --quiet "
        "--out {output} > {log} 2>&1"
