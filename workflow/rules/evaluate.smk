# Evaluations: one job per (data set, method, IPC, seed, architecture), each passing
# evaluate.archs=[arch] (a network's seeds depend on the arch and the run only, so splitting
# the architectures gives the numbers of one `tgdd evaluate` over all of them).


rule tgdd_evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        EVALUATION,
    params:
        overrides=shell_overrides,
        evaluate=section("evaluate", "archs", "protocol"),
    log:
        "logs/tgdd_evaluate/{dataset}/{method}/ipc{ipc}/seed{seed}/{arch}__{protocol}.log",
    benchmark:
        "logs/benchmarks/tgdd_evaluate/{dataset}/{method}/ipc{ipc}/seed{seed}/{arch}__{protocol}.tsv"
    threads: threads_for
    resources:
        gpu=GPUS["evaluate"],
        mem_mb=mem_mb("evaluate"),
        runtime=runtime_min("evaluate"),
    shell:
        "{TGDD} evaluate {TGDD_CONFIG} {params.overrides} threads={threads} > {log} 2>&1"
