# etl-assets developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= .demo
export DAGSTER_HOME ?= $(abspath $(DEMO_DIR))/dagster_home
PYTEST_ARGS ?=

.PHONY: help install demo dev test test-fast lint fmt services services-stop bench bench-quick chaos clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed ## create .venv and install the project with test tools

demo: install ## run the whole pipeline on the embedded demo (SQLite, local folder, DuckDB)
	$(BIN)/etl-assets demo

dev: install ## open the Dagster UI on http://127.0.0.1:3000 with the demo's history
	@mkdir -p $(DAGSTER_HOME) && [ -f $(DAGSTER_HOME)/dagster.yaml ] || cp dagster.yaml $(DAGSTER_HOME)/
	DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1 DAGSTER_EVENT_BATCH_SIZE=1000 \
		$(BIN)/python scripts/run_stoppable.py $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -w workspace.yaml

services: install ## start MariaDB, PostgreSQL and the local S3/SNS endpoint (idempotent)
	scripts/stack.sh start >/dev/null

services-stop: ## stop the local servers this project started (never ones it reused)
	scripts/stack.sh stop

test: install services ## the whole test suite against the real local servers (and headless Chromium)
	@scripts/install_browser.sh
	@eval "$$(scripts/stack.sh env)" && $(BIN)/pytest $(PYTEST_ARGS)

test-fast: install ## unit tests only (no servers)
	$(BIN)/pytest -m "not integration and not slow and not browser" $(PYTEST_ARGS)

lint: install ## ruff + pyright
	$(BIN)/ruff check etl_assets etl_assets_tests scripts bench
	$(BIN)/ruff format --check etl_assets etl_assets_tests scripts bench
	$(BIN)/pyright

bench: install services ## benchmark ROWS=N rows (default 2,000,000) and N/4: table on stdout, bench/results.json
	@eval "$$(scripts/stack.sh env)" && $(BIN)/python bench/run.py --rows $${ROWS:-2000000} $(BENCH_ARGS)

bench-quick: install services ## small benchmark run (20,000 rows) that checks the harness, as CI does
	@eval "$$(scripts/stack.sh env)" && $(BIN)/python bench/run.py --quick --rows 20000 $(BENCH_ARGS)

fmt: install ## format and auto-fix
	$(BIN)/ruff format etl_assets etl_assets_tests scripts
	$(BIN)/ruff check --fix etl_assets etl_assets_tests scripts

chaos: install services ## randomized SIGKILLs (CYCLES=100, ROWS=200000) + every reliability test file; one summary table
	@eval "$$(scripts/stack.sh env)" && $(BIN)/python -m etl_assets_tests.chaos --cycles $${CYCLES:-100} --rows $${ROWS:-200000} $(CHAOS_ARGS)

clean: ## remove the demo's data and caches
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
