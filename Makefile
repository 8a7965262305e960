# The commands the README gives. `make demo` and `make test` do all the set-up on a fresh machine
# (a virtual environment in .venv with the pinned dependencies) before they run.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench chaos migrate docs install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## the main job: the demo on the embedded database
demo: $(STAMP)
	$(BIN)/statekeeper demo

## everything CI runs: lint, type check, the whole test suite (benchmarks in a quick form included)
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## benchmarks (figures go to bench/results.json; copy them into docs/benchmarks.md)
bench: $(STAMP)
	$(BIN)/python -m bench.append
	$(BIN)/python -m bench.parse
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.projector
	$(BIN)/python -m bench.audit

## fault injection against the real daemon, invariants checked after every run (figures: docs/reliability.md)
chaos: $(STAMP)
	$(BIN)/python -m chaos

## apply migrations to the configured database (or the embedded one)
migrate: $(STAMP)
	$(BIN)/statekeeper db upgrade

## regenerate the configuration reference from the settings model (a test fails while it is stale)
docs: $(STAMP)
	$(BIN)/python -m statekeeper.configdoc > docs/configuration.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
