# Reference real-time recommendation serving stack. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_OUT := common/proto
# PyTorch of the offline image (same defaults as docker-compose.yml and deploy/Dockerfile)
TORCH_VERSION   ?= 2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# The 1M-item scale catalog: its own bundle root, Feast project (registry, offline parquet) and a
# saved online store, so it never mixes with the ml-100k stack's keys. SCALE_ITEMS=50000 for a quick one.
SCALE_ITEMS ?= 1000000
SCALE_RDB   := data/scale/redis/online.rdb
SCALE_ENV   := ARTIFACTS_DIR=artifacts/scale/current FEAST_PROJECT=recsys_scale \
               FEAST_OFFLINE_DIR=data/scale/features FEAST_DATA_DIR=data/scale/feast \
               GATEWAY_NUM_CANDIDATES=$${GATEWAY_NUM_CANDIDATES:-500} PRECOMPUTE_TOP_N=$${PRECOMPUTE_TOP_N:-500}
# Redis of the precompute job: REDIS_URL, else the running `make up` / `make up-scale` stack's
STACK_REDIS := $${REDIS_URL:-$$($(PY) -c 'from deploy.local import RUN_DIR, StackInfo; print(StackInfo.load(RUN_DIR).redis_url or "")' 2>/dev/null)}

.PHONY: help setup proto data artifacts candidate artifacts-scale up-cluster up-scale precompute precompute-scale bundles publish rollback canary promote abort shadow experiment-report feature-apply materialize up down demo test test-compose torch-wheel bench loadtest lint chart promcheck design designs profile diagnose clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements/serving.txt requirements/offline.txt requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	@touch $@

setup: $(STAMP) proto ## Create .venv with every dependency and generate the gRPC code

$(PROTO_OUT)/.stamp: $(STAMP) $(wildcard proto/recsys/v1/*.proto)
	@rm -rf $(PROTO_OUT) && mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) proto/recsys/v1/*.proto
	@# protoc writes imports relative to -I; make them absolute inside the common package
	@sed -i 's/^from recsys\.v1 import/from common.proto.recsys.v1 import/' $(PROTO_OUT)/recsys/v1/*.py
	@touch $(PROTO_OUT)/__init__.py $(PROTO_OUT)/recsys/__init__.py $(PROTO_OUT)/recsys/v1/__init__.py $@

proto: $(PROTO_OUT)/.stamp ## Generate Python code from proto/recsys/v1/*.proto into common/proto/

data: $(STAMP) ## Fetch MovieLens-100K from the recbole wheel into data/raw/
	$(PY) -m models data

artifacts: setup ## Data -> train -> evaluate -> gate -> publish -> feast apply + materialise
	$(PY) -m models run

candidate: setup ## Train and gate a new bundle beside current, not switched to (then canary / shadow / publish it)
	$(PY) -m models run --no-publish

artifacts-scale: setup ## 1M-item catalog: bundle (item tower + tuned ANN index) + its features materialised (SCALE_ITEMS=...)
	$(PY) -m models scale --items $(SCALE_ITEMS)
	$(SCALE_ENV) $(PY) -m deploy.local online-store --rdb $(SCALE_RDB)

bundles: setup ## Bundle versions, which is current / previous, the last deployments
	$(PY) -m models list

publish: setup ## Make VERSION=<folder> current (checksums, gate, live Feast registry checked; WHY=...)
	@test -n "$(VERSION)" || { echo "usage: make publish VERSION=<version folder under artifacts/> [WHY=...]"; exit 2; }
	$(PY) -m models publish "$(VERSION)" --why "$(or $(WHY),make publish)"

rollback: setup ## Back to the previous current version in one step (WHY=...)
	$(PY) -m models rollback --why "$(or $(WHY),make rollback)"

canary: setup ## Serve VERSION=<folder> to PERCENT=<0-100> % of users (checked like publish; again to ramp)
	@test -n "$(VERSION)" -a -n "$(PERCENT)" || { echo "usage: make canary VERSION=<version folder> PERCENT=<0-100> [WHY=...]"; exit 2; }
	$(PY) -m models canary "$(VERSION)" --percent "$(PERCENT)" --why "$(or $(WHY),make canary)"

promote: setup ## The canary becomes current for everyone (WHY=...)
	$(PY) -m models promote --why "$(or $(WHY),make promote)"

abort: setup ## Drop the canary: every user on current again (WHY=...)
	$(PY) -m models abort --why "$(or $(WHY),make abort)"

shadow: setup ## Score with VERSION=<folder> in the shadow (VERSION=off stops it; WHY=...)
	@test -n "$(VERSION)" || { echo "usage: make shadow VERSION=<version folder>|off [WHY=...]"; exit 2; }
	$(PY) -m models shadow $(if $(filter off,$(VERSION)),--off,"$(VERSION)") --why "$(or $(WHY),make shadow)"

experiment-report: setup ## Per-variant CTR with confidence intervals of experiment NAME=... (exposures + clicks in Redis)
	@test -n "$(NAME)" || { echo "usage: make experiment-report NAME=<experiment in services/pipeline.toml>"; exit 2; }
	$(PY) -m models experiment-report "$(NAME)"

feature-apply: setup ## feast apply (registry from feature_store/repo)
	$(PY) -m feature_store apply

materialize: setup ## Materialise offline parquet into the online store (Redis or SQLite)
	$(PY) -m feature_store materialize

up: setup ## Start retrieval, ranking, gateway and (with Redis) the events consumer in the background (run/), wait for /readyz
	$(PY) -m deploy.local up

up-cluster: setup ## `make up` on a private 3-node Redis Cluster (redis+cluster://; every Redis user of the stack on it)
	$(PY) -m deploy.local up --redis-cluster

up-scale: setup ## `make up` serving the 1M-item catalog (its Redis loaded from the saved online store)
	$(SCALE_ENV) $(PY) -m deploy.local up --online-rdb $(SCALE_RDB)

precompute: setup ## Every known user's top-N into Redis, for GATEWAY_SERVING_MODE=precomputed|hybrid (REDIS_URL, else the running stack's)
	REDIS_URL=$(STACK_REDIS) $(PY) -m services.precompute

precompute-scale: setup ## `make precompute` for the 1M-item stack of `make up-scale`
	$(SCALE_ENV) REDIS_URL=$(STACK_REDIS) $(PY) -m services.precompute

down: ## Stop exactly the processes `make up` started
	$(PY) -m deploy.local down

demo: setup ## Fresh machine -> artifacts -> stack up -> real recommendations printed
	$(PY) -m models run --skip-if-current
	$(PY) -m deploy.local up
	$(PY) -m deploy.local demo

test: setup ## Unit + integration tests against real Redis, real gRPC processes, real artifacts
	$(PY) -m models run --skip-if-current
	$(PY) -m pytest

test-compose: ## docker compose end-to-end test (needs a Docker engine with Compose v2)
	bash deploy/test-compose.sh

# The image's Python is 3.11 whatever the host's is; pip's find-links (if configured) count too.
torch-wheel: ## CPU torch wheel (Python 3.11) for the offline image into deploy/build/wheels/
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.11 \
	  --index-url $(TORCH_INDEX_URL) -d deploy/build/wheels torch==$(TORCH_VERSION)

bench: setup ## Benchmarks: features, retrieval, ranking, ANN, end to end, events loop, deployment -> bench-results/*.json
	$(PY) -m benchmarks all

loadtest: setup ## Locust, headless, against a running stack (HOST, USERS, DURATION); SLO check
	$(PY) -m loadtest

lint: setup ## ruff
	$(VENV)/bin/ruff check .

chart: setup ## Helm chart offline: helm lint --strict, helm template (default + production values) | kubernetes-validate --strict
	$(PY) -m deploy.helm.chartcheck

promcheck: setup ## Prometheus offline: promtool check rules + test rules (alerts), check config, the dashboard's PromQL
	$(PY) -m deploy.prometheus.promcheck

REQ ?= docs/designs/small-shop.yaml
design: setup ## Architecture document from a requirements file: make design REQ=my.yaml [OUT=doc.md]
	$(PY) -m architect design $(REQ) $(if $(OUT),--out $(OUT))

designs: setup ## Regenerate docs/designs/*.md from their requirements files (the reference profile)
	@for f in docs/designs/*.yaml; do $(PY) -m architect design $$f --out $${f%.yaml}.md || exit $$?; done

profile: setup ## Measure this machine (benchmarks capacity) and write architect/profiles/reference.json from it
	$(PY) -m benchmarks capacity
	$(PY) -m architect design --profile-from bench-results/capacity.json --write-profile architect/profiles/reference.json

diagnose: setup ## Findings and remediations for the running stack (default: the one `make up` started)
	$(PY) -m architect diagnose $(ARGS)

clean: ## Remove generated data, artifacts, results and the venv
	rm -rf data artifacts bench-results run loadtest/reports $(PROTO_OUT) $(VENV)
