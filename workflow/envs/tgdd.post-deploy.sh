#!/usr/bin/env bash
# Run by Snakemake once, inside the new environment of tgdd.yaml, in the workflow's working
# directory (the repository root): install this checkout's tgdd and its pinned dependencies.
set -euo pipefail
python -m pip install --quiet -e .
