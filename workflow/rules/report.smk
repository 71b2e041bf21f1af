# The tables: `tgdd report` over every evaluation (it reads all of <results>/eval; the inputs
# make it wait for this matrix), incl. metrics.json, the headline accuracies DVC tracks, and the
# class-overlap analysis, which embeds the synthetic sets with the trained experts: one table
# across all data sets and one t-SNE figure per analysed data set and IPC (common.smk).
#
# Its resources come from the analysis's work (tgdd.analysis_budget): memory is the bound of the
# largest data set (they are analysed one after the other: the training split read, then each set's
# decoded images embedded a batch at a time, its exact kNN/silhouette from 256 MiB blocks of the
# distance matrix, t-SNE on a seeded sample of at most 1,000 images per panel), run time the sum of
# the data sets' estimates (embedding, distances, t-SNE) at the job's threads, doubled. Retries ask
# for half the first request more, within TGDD_MAX_RUNTIME_MIN / TGDD_MAX_MEM_MB. The job asks for
# no GPU (on SLURM it goes to the CPU partition), so it runs the analysis on its CPU threads:
# device=cpu, also under a GPU preset (device: cuda), which would refuse a node without a GPU.
from tgdd.analysis_budget import report_request, report_work

from tgdd.report_efficiency import FILES as EFFICIENCY_FILES

REPORT_WORK = report_work(BASE)
REPORT_THREADS = 8  # CPU threads: torch's for the embedding and the distances, OpenMP's for t-SNE
REPORT_CAPS = {"max_runtime_min": LIMITS.max_runtime_min, "max_mem_mb": LIMITS.max_mem_mb}
try:  # a report that cannot fit the caps stops the planning here, with one line
    report_request(REPORT_WORK, REPORT_THREADS, **REPORT_CAPS)
except TgddError as exc:
    raise WorkflowError(str(exc)) from None


rule tgdd_report:
    input:
        evaluations=evaluation_targets(),
        synthetic=distill_targets(),
        experts=expert_targets(),
        continual=continual_targets(),  # none unless continual.enabled (continual.smk)
    output:
        csv=report(TABLES["summary.csv"], caption="../report/summary.rst", category="Results"),
        md=report(TABLES["summary.md"], caption="../report/summary_md.rst", category="Results"),
        published=report(TABLES["published_comparison.md"], caption="../report/published.rst", category="Results"),
        metrics=TABLES["metrics.json"],
        overlap=report(CLASS_OVERLAP, caption="../report/class_overlap.rst", category="Class overlap"),
        tsne=report(tsne_figures(), caption="../report/tsne.rst", category="Class overlap"),
        efficiency=[f"{TABLES_DIR}/{name}" for name in EFFICIENCY_FILES],  # accuracy against seconds and memory
        continual=continual_tables(),
    log:
        "logs/tgdd_report/report.log",
    benchmark:
        "logs/benchmarks/tgdd_report/report.tsv"
    conda:
        "../envs/tgdd.yaml"
    threads: REPORT_THREADS
    resources:
        gpu=GPUS["report"],
        mem_mb=lambda wildcards, threads, attempt: report_request(REPORT_WORK, threads, attempt, **REPORT_CAPS)[1],
        runtime=lambda wildcards, threads, attempt: report_request(REPORT_WORK, threads, attempt, **REPORT_CAPS)[0],
    params:
        tgdd=TGDD,
        config=TGDD_CONFIG,
    shell:
        "{params.tgdd:q} report --config {params.config:q} threads={threads} device=cpu > {log} 2>&1"


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
