# runstream — every target does its own set-up (virtualenv, packages, Kafka jars).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup jars run test unit integration lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

jars: setup
	$(PY) -m runstream dev-kafka fetch

## The main job on local defaults: dev broker, local Labelbox API, service, demo stream.
run: jars
	$(PY) -m runstream up

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy service consumers runstream devstack

unit: setup
	$(VENV)/bin/pytest -m unit

integration: jars
	$(VENV)/bin/pytest -m integration

## All tests (unit + integration against a real broker) plus ruff and mypy.
test: jars lint
	$(VENV)/bin/pytest

drill: jars ; $(PY) -m bench.drill $(DRILL_ARGS)

bench: jars
	test -x .venv-quix/bin/python || ($(PYTHON) -m venv .venv-quix && .venv-quix/bin/pip install -q --upgrade pip)
	.venv-quix/bin/pip install -q --group bench-quix
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .runstream .mypy_cache .ruff_cache .pytest_cache
