# The tables: `tgdd report` over every evaluation (it reads all of <results>/eval; the inputs
# make it wait for this matrix), incl. metrics.json, the headline accuracies DVC tracks.


rule tgdd_report:
    input:
        evaluation_targets(),
    output:
        csv=report(TABLES["summary.csv"], caption="../report/summary.rst", category="Results"),
        md=report(TABLES["summary.md"], caption="../report/summary_md.rst", category="Results"),
        published=report(
            TABLES["published_comparison.md"], caption="../report/published.rst", category="Results"
        ),
        metrics=TABLES["metrics.json"],
    log:
        "logs/tgdd_report/report.log",
    benchmark:
        "logs/benchmarks/tgdd_report/report.tsv"
    threads: 1
    resources:
        gpu=GPUS["report"],
        mem_mb=BASE_MEM_MB["report"],
        runtime=BASE_RUNTIME_MIN["report"],
    shell:
        "{TGDD} report {TGDD_CONFIG} > {log} 2>&1"


import time


# The last words of a run that (re)made the tables: print them, as `tgdd pipeline` does, so that
# `snakemake --cores all` (the README's main job) ends with the results rather than a job count.
WORKFLOW_STARTED = time.time()


onsuccess:
    summary = Path(TABLES["summary.md"])
    if summary.is_file() and summary.stat().st_mtime >= WORKFLOW_STARTED:
        print(summary.read_text())
        print(f"tables: {TABLES_DIR}/ (summary.csv, summary.md, published_comparison.md, metrics.json)")
