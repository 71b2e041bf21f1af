# Two commands on a fresh machine with Python 3.11:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/config.yaml

.PHONY: setup run test lint format generated clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## The main job: the quick matrix on the embedded digits as a Snakemake workflow (one job per
## step and cell, one per core at a time), ending with the results table.
run: setup
	$(BIN)/snakemake --cores all --configfile $(CONFIG)

LINTED := src tests benchmarks workflow/scripts
SNAKEFILES := Snakefile $(wildcard workflow/rules/*.smk)
SNAKEFMT := $(BIN)/snakefmt --line-length 120

## The whole test suite (what CI runs): lint, format check (Python and Snakemake files), the
## workflow's lint, tests.
test: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(SNAKEFMT) --check $(SNAKEFILES)
	$(BIN)/snakemake --lint
	@$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check $(LINTED) && $(BIN)/ruff format --check $(LINTED)
	$(SNAKEFMT) --check $(SNAKEFILES) && $(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff check --fix $(LINTED) && $(BIN)/ruff format $(LINTED)
	$(SNAKEFMT) $(SNAKEFILES)

## Regenerate the files derived from the typed config (workflow schema, docs/configuration.md key table).
generated: setup
	$(BIN)/python workflow/scripts/write_schema.py
	$(BIN)/python -m tgdd.docs

clean:
	rm -rf results/experts results/synthetic results/eval results/tables data/prepared
