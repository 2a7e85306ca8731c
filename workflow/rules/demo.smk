rule generate_demo:
    output:
        manifest=DEMO_MANIFEST,
    log:
        LOGS / "demo" / "generate_demo.log",
    benchmark:
        BENCHMARKS / "demo" / "generate_demo.tsv"
    conda:
        "../../envs/bitro.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        outdir=DEMO_DIR,
        seed=DEMO.get("seed", 0),
        preset=DEMO.get("preset", "default"),
    shell:
        "bitro demo --out {params.outdir} --seed {params.seed} --preset {params.preset} --quiet "
        "--manifest {output.manifest} > {log} 2>&1"
