# Evaluations: one job per (data set, method, IPC, seed, architecture), each passing
# evaluate.archs=[arch] (a network's seeds depend on the arch and the run only, so splitting
# the architectures gives the numbers of one `tgdd evaluate` over all of them).


rule tgdd_evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        EVALUATION,
    log:
        "logs/tgdd_evaluate/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}/{arch}__{protocol}.log",
    benchmark:
        "logs/benchmarks/tgdd_evaluate/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}/{arch}__{protocol}.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: threads_for
    resources:
        gpu=GPUS["evaluate"],
        mem_mb=mem_mb("evaluate"),
        runtime=runtime_min("evaluate"),
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        evaluate=resolved("evaluate"),
    shell:
        "{params.tgdd:q} evaluate --config {params.config:q} {params.overrides} threads={threads} > {log} 2>&1"
