# Two commands on a fresh machine with Python 3.11:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/quick.yaml

.PHONY: setup run test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## The main job: the quick matrix on the embedded digits, then the results table.
run: setup
	$(BIN)/tgdd pipeline --config $(CONFIG)

## The whole test suite (what CI runs): lint, format check, tests.
test: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	@$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

format: setup
	$(BIN)/ruff check --fix src tests && $(BIN)/ruff format src tests

clean:
	rm -rf results/experts results/synthetic results/eval results/tables data/prepared
