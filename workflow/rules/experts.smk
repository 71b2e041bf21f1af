# Expert trajectories: shared by every method that needs them (tgdd.methods: needs_trajectories),
# so one job per (data set, seed), whatever the methods and IPCs; the distill jobs of the other
# methods do not wait for them (distill_inputs in common.smk).


rule tgdd_experts:
    input:
        f"{PREPARED_DIR}/manifest.json",
    output:
        manifest=f"{EXPERTS_DIR}/manifest.json",
    log:
        "logs/tgdd_experts/{dataset}/{experts_arch}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/tgdd_experts/{dataset}/{experts_arch}/seed{seed}.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: threads_for
    resources:
        gpu=GPUS["experts"],
        mem_mb=mem_mb("experts"),
        runtime=runtime_min("experts"),
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        experts=section("experts"),
    shell:
        "{params.tgdd:q} experts --config {params.config:q} {params.overrides} threads={threads} > {log} 2>&1"
