# Prepared data: one job per data set of matrix.datasets.


rule tgdd_prepare:
    output:
        train=f"{PREPARED_DIR}/train.pt",
        test=f"{PREPARED_DIR}/test.pt",
        manifest=f"{PREPARED_DIR}/manifest.json",
    log:
        "logs/tgdd_prepare/{dataset}.log",
    benchmark:
        "logs/benchmarks/tgdd_prepare/{dataset}.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: 1
    resources:
        gpu=GPUS["prepare"],
        mem_mb=mem_mb("prepare"),
        runtime=runtime_min("prepare"),
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        data=section("data"),
    shell:
        "{params.tgdd:q} prepare --config {params.config:q} {params.overrides} > {log} 2>&1"
