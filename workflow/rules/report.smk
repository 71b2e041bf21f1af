# The tables: `tgdd report` over every evaluation (it reads all of <results>/eval; the inputs
# make it wait for this matrix), incl. metrics.json, the headline accuracies DVC tracks, and the
# class-overlap analysis, which embeds the synthetic sets with the trained experts: one table
# across all data sets and one t-SNE figure per analysed data set and IPC (common.smk).


rule tgdd_report:
    input:
        evaluations=evaluation_targets(),
        synthetic=distill_targets(),
        experts=expert_targets(),
    output:
        csv=report(TABLES["summary.csv"], caption="../report/summary.rst", category="Results"),
        md=report(TABLES["summary.md"], caption="../report/summary_md.rst", category="Results"),
        published=report(TABLES["published_comparison.md"], caption="../report/published.rst", category="Results"),
        metrics=TABLES["metrics.json"],
        overlap=report(CLASS_OVERLAP, caption="../report/class_overlap.rst", category="Class overlap"),
        tsne=report(tsne_figures(), caption="../report/tsne.rst", category="Class overlap"),
    log:
        "logs/tgdd_report/report.log",
    benchmark:
        "logs/benchmarks/tgdd_report/report.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: 1
    resources:
        gpu=GPUS["report"],
        mem_mb=BASE_MEM_MB["report"],
        runtime=BASE_RUNTIME_MIN["report"],
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
    shell:
        "{params.tgdd:q} report --config {params.config:q} > {log} 2>&1"


import time

# The last words of a run that (re)made the tables: print them, as `tgdd pipeline` does, so that
# `snakemake --cores all` (the README's main job) ends with the results rather than a job count.
WORKFLOW_STARTED = time.time()


onsuccess:
    summary = Path(TABLES["summary.md"])
    if summary.is_file() and summary.stat().st_mtime >= WORKFLOW_STARTED:
        print(summary.read_text())
        tables = ", ".join(Path(f).name for f in [*TABLES.values(), CLASS_OVERLAP])
        print(f"tables: {TABLES_DIR}/ ({tables}; {len(tsne_figures())} t-SNE figures)")
