# Continual learning as an evaluation protocol (tgdd.continual): one job per (data set, method, IPC,
# seed, variant, step count) of the cells whose config says continual.enabled (default false: no job,
# no target, nothing changes), each `tgdd continual` with continual.steps=[n]. Its network is
# continual.arch, a wildcard of its own (not evaluate.archs'). The report waits for them and tabulates
# them (continual.md/.csv, one curve figure per data set, IPC and step count).
# (Its functions are in common.smk, with the other rules'.)


rule tgdd_continual:
    input:
        unpack(evaluate_inputs),
    output:
        CONTINUAL,
    log:
        "logs/tgdd_continual/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}/{continual_arch}__steps{steps}.log",
    benchmark:
        "logs/benchmarks/tgdd_continual/{dataset}/{method}/ipc{ipc}/seed{seed}{variant}/{continual_arch}__steps{steps}.tsv"
    wildcard_constraints:
        steps=r"\d+",
        continual_arch=_alternatives(dataset_config(d).continual.arch for d in DATASETS),
    conda:
        "../envs/tgdd.yaml"
    threads: threads_for
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: continual_request(wildcards).attempt(attempt, LIMITS)[1],
        runtime=lambda wildcards, attempt: continual_request(wildcards).attempt(attempt, LIMITS)[0],
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        continual=continual_resolved,
    shell:
        "{params.tgdd:q} continual --config {params.config:q} {params.overrides} 'continual.steps=[{wildcards.steps}]' "
        "continual.arch={wildcards.continual_arch:q} threads={threads} > {log} 2>&1"
