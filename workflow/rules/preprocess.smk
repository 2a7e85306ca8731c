# Paper §3.1–3.2, Appendix B: tissue, units, stain normalisation, targets, cells and their crops, per sample.


# tissue, units, stain and (labelled cohorts) targets always run together: one job and one Python start-up
# per sample (`bitro prepare`), writing the same files as the four verbs. A change to any of them already
# reruns everything from the cells on (cells read the tissue, units and stain), so one job for the four
# only reruns cheap steps more: the other three, and the cohort's genes and folds.
rule prepare:
    input:
        unpack(sample_inputs),
        doctor=doctor_stamp,
        reference=stain_reference_input,
    output:
        mask=SAMPLE_DIR / SampleFile.TISSUE,
        geojson=SAMPLE_DIR / SampleFile.TISSUE_GEOJSON,
        units=SAMPLE_DIR / SampleFile.UNITS,
        stain=SAMPLE_DIR / SampleFile.STAIN,
        targets=SAMPLE_DIR / SampleFile.TARGETS,
    log:
        LOGS / "prepare" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "prepare" / "{cohort}" / "{sample}.tsv"
    wildcard_constraints:
        cohort=_alternatives(EVALUATED) or NO_COHORT,
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        sample=sample_args,
        settings=prepare_args,
        targets=targets_out_arg,
    shell:
        "bitro prepare {params.sample} {params.settings} --reference {input.reference} "
        "--tissue-out {output.mask} "
        "--geojson {output.geojson} --units-out {output.units} --stain-out {output.stain} "
        "{params.targets} > {log} 2>&1"


# A predicted cohort's samples have no targets to make (predict.smk).
use rule prepare as prepare_predicted with:
    output:
        mask=SAMPLE_DIR / SampleFile.TISSUE,
        geojson=SAMPLE_DIR / SampleFile.TISSUE_GEOJSON,
        units=SAMPLE_DIR / SampleFile.UNITS,
        stain=SAMPLE_DIR / SampleFile.STAIN,
    log:
        LOGS / "prepare_predicted" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "prepare_predicted" / "{cohort}" / "{sample}.tsv"
    wildcard_constraints:
        cohort=_alternatives(PREDICTED) or NO_COHORT,


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
