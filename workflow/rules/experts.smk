# Expert trajectories, per recipe (tgdd.resolve.EXPERT_RECIPES: TGDD's for TGDD, DANCE and
# herding, MTT's for MTT, FTD's for FTD): shared by every method that needs them (tgdd.cards: needs_trajectories,
# expert_recipe), whatever the methods and IPCs; the distill jobs of the other methods do not wait for them
# (distill_inputs in common.smk). One job per trajectory, each its own output file, GPU request,
# log and benchmark: the N trajectories of a (data set, arch, experts seed) run at once on N GPUs, and a
# rerun (after a failure, a time-limit kill or a change) never touches a finished trajectory whose
# resolved recipe is unchanged; an interrupted one resumes from its epoch checkpoint (not a
# declared output, so Snakemake keeps it). A small gather job writes the manifest.


rule tgdd_trajectory:
    input:
        f"{PREPARED_DIR}/manifest.json",
    output:
        trajectory=TRAJECTORY,
    log:
        "logs/tgdd_trajectory/{dataset}/{recipe}/{experts_arch}/seed{experts_seed}{experts_variant}/trajectory_{index}.log",
    benchmark:
        "logs/benchmarks/tgdd_trajectory/{dataset}/{recipe}/{experts_arch}/seed{experts_seed}{experts_variant}/trajectory_{index}.tsv"
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
        recipe=resolved("experts"),
    shell:
        "{params.tgdd:q} experts --config {params.config:q} {params.overrides} threads={threads} "
        "--recipe {wildcards.recipe} --index {wildcards.index} > {log} 2>&1"


rule tgdd_experts:
    input:
        unpack(gather_inputs),
    output:
        manifest=f"{EXPERTS_DIR}/manifest.json",
    log:
        "logs/tgdd_experts/{dataset}/{recipe}/{experts_arch}/seed{experts_seed}{experts_variant}.log",
    conda:
        "../envs/tgdd.yaml"
    threads: 1
    resources:
        gpu=GPUS["gather"],
        mem_mb=capped_mem("gather"),
        runtime=capped_runtime("gather"),
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
        overrides=shell_overrides,
        recipe=resolved("experts"),
    shell:
        "{params.tgdd:q} experts --config {params.config:q} {params.overrides} --recipe {wildcards.recipe} --gather > {log} 2>&1"
