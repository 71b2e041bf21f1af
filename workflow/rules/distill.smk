# Synthetic sets: one job per (data set, method, IPC, seed).


rule tgdd_distill:
    input:
        unpack(distill_inputs),
    output:
        synthetic=SYNTHETIC,
        losses=f"{SYNTHETIC_DIR}/losses.csv",
        grid=report(
            f"{SYNTHETIC_DIR}/grid.png",
            caption="../report/grid.rst",
            category="Synthetic images",
            subcategory="{dataset}",
            labels={"method": "{method}", "IPC": "{ipc}", "seed": "{seed}"},
        ),
    log:
        "logs/tgdd_distill/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}.log",
    benchmark:
        "logs/benchmarks/tgdd_distill/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: threads_for
    resources:
        gpu=GPUS["distill"],
        mem_mb=mem_mb("distill"),
        runtime=runtime_min("distill"),
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        distill=resolved("distill"),
    shell:
        "{params.tgdd:q} distill --config {params.config:q} {params.overrides} threads={threads} > {log} 2>&1"
