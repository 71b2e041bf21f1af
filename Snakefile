# TGDD as a Snakemake workflow: every rule runs one `tgdd` CLI step, every path comes from
# tgdd.paths, every setting from ONE tgdd config file.
#
#   snakemake --cores all                          # the whole matrix of config/config.yaml
#   snakemake --configfile my.yaml --cores all distill   # (--configfile takes several files: targets after another option)
#   snakemake --profile slurm                      # on a SLURM cluster (see slurm/profile.yaml)
#   snakemake --report report.html                 # tables and synthetic images
#
# Targets: all (default), prepare, experts, distill, evaluate, continual (if continual.enabled), report.
# See workflow/README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/experts.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/continual.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        report_targets(),


rule prepare:
    input:
        prepared_targets(),


rule experts:
    input:
        expert_targets(),


rule distill:
    input:
        distill_targets(),


rule evaluate:
    input:
        evaluation_targets(),


rule continual:
    input:
        continual_targets(),


rule report:
    input:
        report_targets(),
