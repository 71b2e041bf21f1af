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
        mem_mb=BASE_MEM_MB["report"],
        runtime=BASE_RUNTIME_MIN["report"],
    shell:
        "{TGDD} report {TGDD_CONFIG} > {log} 2>&1"
