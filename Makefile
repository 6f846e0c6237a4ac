# The two set-up commands: `make run` and `make test`. Both build .venv on first use.
# `make run` installs the runtime only; `make test` (and lint, typecheck) add the dev extras.
# Each install has its own stamp, redone when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The dev extras include the runtime, so this stamps both: `make run` after `make test`
# installs nothing.
$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(RUNTIME) $@

# The local quickstart: on a loopback address (the default), callbacks and image_input
# may reach this machine (see `bananastand serve --help`).
run: $(RUNTIME)
	$(BIN)/bananastand serve --allow-loopback

# The suite runs once per database: BANANASTAND_TEST_DATABASES=sqlite (or postgresql, or
# sqlite,postgresql); unset, both where PostgreSQL is installed (and under CI), else SQLite
# (tests/databases.py). Every run goes ahead; the target fails if any of them failed.
# BANANASTAND_TEST_DATABASES=sqlite is the quick path. The tests that touch no database
# run on the first pass only (BANANASTAND_TEST_ONLY_DATABASE=1 on the others).

test: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	@databases="$$($(BIN)/python tests/databases.py)" || exit 2; failed=""; only=""; \
	for database in $$databases; do \
	  echo "pytest on $$database (BANANASTAND_TEST_DATABASE=$$database$${only:+, BANANASTAND_TEST_ONLY_DATABASE=1})"; \
	  BANANASTAND_TEST_DATABASE=$$database BANANASTAND_TEST_ONLY_DATABASE=$$only $(BIN)/pytest \
	    || failed="$$failed $$database"; \
	  only=1; \
	done; \
	if [ -n "$$failed" ]; then echo "the suite failed on:$$failed"; exit 1; fi

lint: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(DEV)
	$(BIN)/mypy

bench: $(RUNTIME)
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) var
