# Paper §3.2–3.3: cell embeddings, PCA to 128 dimensions, kNN graphs within units.


# How cells are embedded (features.mode) and what the embed rule reads: embedding.smk.
include: "embedding.smk"


rule embed:
    input:
        unpack(embed_inputs),
    output:
        embeddings=SAMPLE_DIR / SampleFile.EMBEDDINGS,
        description=SAMPLE_DIR / SampleFile.EMBEDDINGS_DESCRIPTION,
    log:
        LOGS / "embed" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "embed" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=FEATURES["gpu"],
    params:
        source=embed_source_args,
        encoder=FEATURES["encoder"],
        weights=encoder_weights_arg,
        image_size=FEATURES["image_size"],
        pooling=FEATURES["pooling"],
        batch=FEATURES["batch_size"],
        device="cuda" if FEATURES["gpu"] else "cpu",
    shell:
        "bitro embed {params.source} --encoder {params.encoder} {params.weights} "
        "--image-size {params.image_size} --pooling {params.pooling} --batch-size {params.batch} "
        "--device {params.device} --quiet --out {output.embeddings} > {log} 2>&1"


rule reduce:
    input:
        embeddings=SAMPLE_DIR / SampleFile.EMBEDDINGS,
        description=SAMPLE_DIR / SampleFile.EMBEDDINGS_DESCRIPTION,
    output:
        SAMPLE_DIR / SampleFile.FEATURES,
    log:
        LOGS / "reduce" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "reduce" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        n_components=FEATURES["n_components"],
    shell:
        "bitro reduce --embeddings {input.embeddings} --n-components {params.n_components} "
        "--out {output} > {log} 2>&1"


rule graph:
    input:
        SAMPLE_DIR / SampleFile.CELLS,
    output:
        SAMPLE_DIR / SampleFile.GRAPH,
    log:
        LOGS / "graph" / "{cohort}" / "{sample}.log",
    benchmark:
        BENCHMARKS / "graph" / "{cohort}" / "{sample}.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        k=FEATURES["graph_k"],
    shell:
        "bitro graph --cells {input} --k {params.k} --out {output} > {log} 2>&1"
