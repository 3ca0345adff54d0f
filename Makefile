# nanobatch: `make demo` runs the example job on the built-in emulator; `make test` runs lint and the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SDK1 := $(VENV)/sdk1
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# An old google-genai (1.x speaks /v1beta/) beside the new one, for the emulator's wire tests.
	$(BIN)/pip install -q --no-deps --target $(SDK1) 'google-genai==1.75.0'
	touch $(STAMP)

dev: $(STAMP) ## create .venv with the package and the dev tools

demo: $(STAMP) ## run the example job end to end on the emulator (SQLite ledger, local folder)
	$(BIN)/nanobatch run jobs/example.toml --emulator --poll-interval 0.2

lint: $(STAMP) ## ruff format + lint, mypy, import-linter
	$(BIN)/ruff format --check pipeline tests benchmarks migrations
	$(BIN)/ruff check pipeline tests benchmarks migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff format and safe fixes
	$(BIN)/ruff format pipeline tests benchmarks migrations
	$(BIN)/ruff check --fix pipeline tests benchmarks migrations

test: lint ## lint, then every test, benchmark smoke tests included (PostgreSQL tests need 127.0.0.1:5432; with CI=true they must run)
	$(BIN)/pytest -q -m 'bench or not bench'

bench: $(STAMP) ## the benchmarks (not part of `make test`); figures go to benchmarks/results/
	$(BIN)/python -m benchmarks

clean: ## remove the venv and local state
	rm -rf $(VENV) .nanobatch out

.PHONY: help dev demo lint format test bench clean
