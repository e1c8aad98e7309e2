# Everything a developer or CI runs goes through these targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PSC := $(VENV)/bin/pscluster
TORCH_REQ ?= requirements/cpu.txt

.PHONY: install proto proto-check lint test test-fast demo bench bench-compose clean \
	docker-setup images up down logs load soak load-compose

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
	$(VENV)/bin/ruff check pscluster tests bench examples deploy/locust
	$(VENV)/bin/ruff format --check pscluster tests bench examples deploy/locust
	$(VENV)/bin/mypy
	MYPYPATH=deploy/locust $(VENV)/bin/mypy deploy/locust/*.py

# The container tests (tests/containers) need Docker and compose v2: docker-setup installs them
# (and what an offline build needs) first. Outside CI a failed setup only skips those tests.
test: install
	@$(MAKE) --no-print-directory docker-setup || { [ -z "$$CI" ] && \
	  echo "docker-setup failed: the container tests will be skipped (CI is not set)" >&2; }
	$(VENV)/bin/pytest -q -ra

test-fast: install
	$(VENV)/bin/pytest -q -ra -m "not slow"

# The main job: a local embedded cluster trains a real model to its target accuracy.
demo: install
	$(PSC) up --local --shards 2 --workers 3 --detach
	$(PSC) submit examples/digits.yaml --watch; rc=$$?; $(PSC) down; exit $$rc

bench: install
	$(PY) bench/transport.py
	$(PY) bench/peers.py
	$(PY) bench/scaling.py
	$(PY) bench/compression.py
	$(PY) bench/staleness.py --repeats 3 --staleness-lr
	$(PY) bench/staleness.py --repeats 2 --staleness-lr --slowdown 3
	$(PY) bench/stragglers.py --repeats 2
	$(PY) bench/auto.py --repeats 2
	$(PY) bench/auto_judge.py --seeds 0,1
	$(PY) bench/lease_size.py --repeats 3
	$(PY) bench/sync_drift.py
	$(PY) bench/durability.py
	$(PY) bench/faults.py
	$(PY) bench/finetune.py
	$(PY) bench/precision.py
	$(PY) bench/data.py
	$(PY) bench/sparse.py
	$(PY) bench/table_memory.py
	$(PY) bench/inference.py
	$(PY) bench/compress.py
	$(PY) bench/distill.py
	$(PY) bench/coordinator_scale.py --kill-at 40 $(if $(SCALE_BASELINE),--baseline $(SCALE_BASELINE)) \
	  --out bench/results/coordinator_scale-after.json
	$(PY) bench/coordinator_scale.py --workers 500 --task-seconds 3 \
	  $(if $(SCALE_BASELINE),--baseline $(SCALE_BASELINE)) --out bench/results/coordinator_scale-paced.json
	$(PY) bench/scale_shards.py
	$(PY) bench/cost_model.py

# Locust (deploy/locust): a single-client run, then LOAD_USERS users for LOAD_TIME against
# PSC_COORDINATOR, or a local cluster started for the run; fails if any request failed.
LOAD_USERS ?= 50
LOAD_TIME ?= 60s
LOAD_MB ?= 1
LOAD_CODEC ?= none
# A worker user's step period in seconds; 0 runs steps back to back (peak throughput).
LOAD_STEP ?= 0
LOAD_ARGS = --users $(LOAD_USERS) --model-mb $(LOAD_MB) --codec $(LOAD_CODEC) \
	--step-seconds $(LOAD_STEP)

load: install
	$(PY) deploy/locust/run.py $(LOAD_ARGS) --time $(LOAD_TIME) --out bench/results/load

soak: install
	$(PY) deploy/locust/run.py $(LOAD_ARGS) --time 10m --out bench/results/load_soak

# The same against the compose cluster: its shards published on 127.0.0.1 for the run
# (deploy/locust/compose.load.yaml), no compose workers (the locust users are the workers),
# shard RSS from `docker stats`. The cluster keeps running afterwards: `make down`.
LOAD_COMPOSE = $(COMPOSE) -f compose.yaml -f deploy/locust/compose.load.yaml
load-compose: install
	$(LOAD_COMPOSE) up -d --build --wait --scale worker=0
	$(PY) deploy/locust/run.py $(LOAD_ARGS) --time $(LOAD_TIME) \
	  --coordinator 127.0.0.1:$${PSC_PUBLISH_PORT:-50051} \
	  --shard-addresses $$($(LOAD_COMPOSE) port --index 1 ps 50061),$$($(LOAD_COMPOSE) port --index 2 ps 50061) \
	  --docker-shards pscluster-ps- --out bench/results/load_compose

# --- containers (compose.yaml; deploy/README.md) ---
# Where no registry is reachable, docker-setup writes .env so that compose builds offline.
COMPOSE = docker compose

docker-setup: install
	deploy/scripts/docker-setup.sh

# 2.2 GB of digits on disk, trained through compose with the data mounted in the workers;
# the peak RSS of every process (bench/results/data_compose.json).
bench-compose: docker-setup
	$(PY) bench/data_compose.py

images:
	$(COMPOSE) build

up:
	$(COMPOSE) up -d --build --wait

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs --tail 100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
