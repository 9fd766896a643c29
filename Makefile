# Every target installs into .venv by itself when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-deps lint typecheck pytest coverage bench clean llamacpp

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mars demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Redis and chromium for the integration and browser tests: installed/started when possible, else one line
# naming the command to run (the same script as .ci/run).
test-deps:
	scripts/test-deps.sh

# llama.cpp's server and the SmolLM2 model for tests/llamacpp, built once into MARS_LLAMACPP_HOME
# (default ~/.cache/mars/llamacpp; 5-10+ minutes the first time, instant afterwards).
llamacpp: $(STAMP)
	$(BIN)/python -m orchestrator.llamacpp.install

# The suite with branch coverage and its floor (fail_under in pyproject.toml): `make test` fails below
# it. Measuring costs about 30% of the suite's time; `python -m pytest` alone runs without it.
pytest: $(STAMP) test-deps llamacpp
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered

test: lint typecheck pytest

coverage: pytest

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
