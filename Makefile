# Every target creates .venv and installs what it needs, so a fresh clone
# needs only python3 (3.10 or newer) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: example test check format clean redis-server bench mechanisms soak docs

# The package alone, for the example: its three dependencies, nothing else.
$(BIN)/.package: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The package with the test and lint tools.
$(BIN)/.installed: $(BIN)/.package
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,lint]"
	touch $@

# The package with Sphinx and the extras whose modules the API reference documents.
$(BIN)/.docs: $(BIN)/.package setup.cfg
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

redis-server:
	@scripts/ensure-redis-server

example: $(BIN)/.package redis-server
	$(BIN)/python examples/rpc.py

test: $(BIN)/.installed redis-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Both settings: about five minutes; BENCH_ARGS=--quick a minute or two.
bench: $(BIN)/.installed redis-server
	$(BIN)/python -m pip install --quiet -e ".[bench,hiredis]"
	$(BIN)/python -m benchmarks.request_latency $(BENCH_ARGS)

# Each speed mechanism on and off, in one run: several minutes;
# MECHANISMS_ARGS=--quick a minute or two, "--only inline,ride" some of them.
mechanisms: $(BIN)/.installed redis-server
	$(BIN)/python -m pip install --quiet -e ".[bench,hiredis]"
	$(BIN)/python -m benchmarks.mechanisms $(MECHANISMS_ARGS)

# 100,000 requests, checking that nothing grows: one to two minutes.
# SOAK_ARGS="--requests 10000" makes a quick run.
soak: $(BIN)/.installed redis-server
	$(BIN)/python -m benchmarks.soak $(SOAK_ARGS)

# The documentation site, in docs/_build/html; any warning fails the build.
# -E reads every page again, so that a second run still shows every warning.
docs: $(BIN)/.docs
	$(BIN)/python -m sphinx -b html -E -W --keep-going -q docs docs/_build/html
	@echo "The documentation is in docs/_build/html/index.html"

check: $(BIN)/.installed
	$(BIN)/ruff format --check redis_rpc tests benchmarks examples
	$(BIN)/ruff check redis_rpc tests benchmarks examples
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format redis_rpc tests benchmarks examples
	$(BIN)/ruff check --fix redis_rpc tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache docs/_build
