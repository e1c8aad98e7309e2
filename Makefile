# Everything a developer or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PSC := $(VENV)/bin/pscluster
TORCH_REQ ?= requirements/cpu.txt

.PHONY: install proto proto-check lint test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml $(TORCH_REQ)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(TORCH_REQ)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Generated code is committed (so plain `pip install .` and image builds need no protoc);
# tests/test_proto_generated.py regenerates it and fails if it differs.
proto: install
	$(PY) proto/generate.py

lint: install
	$(VENV)/bin/ruff check pscluster tests bench examples
	$(VENV)/bin/ruff format --check pscluster tests bench examples
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest -q -ra

test-fast: install
	$(VENV)/bin/pytest -q -ra -m "not slow"

# The main job: a local embedded cluster trains a real model to its target accuracy.
demo: install
	$(PSC) up --local --shards 2 --workers 3 --detach
	$(PSC) submit examples/digits.yaml --watch; rc=$$?; $(PSC) down; exit $$rc

bench: install
	$(PY) bench/transport.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
