# Entry points for people and CI. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/proto libs/common services/ingest services/validate services/route services/status tools/invoicectl
STAMP := $(VENV)/.installed
PROTO_FILES := $(wildcard proto/invoicing/v1/*.proto)
# `make up PLATFORMS=2` (or run, test, ...): platform B (`peer`) beside the
# first, on the same Kafka, PostgreSQL and Keycloak (docs/deploy.md, "Two
# platforms on one machine"). Exported: deploy/local/stack.py reads it.
PLATFORMS ?= 1
export PLATFORMS

.PHONY: install run up down status test test-unit lint proto proto-check clean bench bench-quick chaos \
	images deploy-local undeploy-local test-images scale-out compose-images compose-up compose-ps compose-down compose-clean

install: $(STAMP)
	@$(BIN)/python scripts/fetch_artefacts.py
	@scripts/install_tools.sh

$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-build-isolation -c constraints.txt $(addprefix -e ,$(PACKAGES))
	@touch $(STAMP)

## Start Kafka, PostgreSQL and the four services, then push the samples through.
run: install
	$(BIN)/python deploy/local/stack.py up
	. .run/env && $(BIN)/invoicectl directory import samples/directory.csv \
		&& $(BIN)/invoicectl directory import-services samples/directory-services.csv \
		&& $(BIN)/invoicectl submit --follow samples/*.xml samples/*.txt \
		&& $(BIN)/invoicectl submit --follow samples/facturx-invoice-valid.pdf \
			--attach samples/attachments/delivery-note.pdf --attach samples/attachments/timesheet.csv \
		&& $(BIN)/python scripts/download_samples.py ubl-invoice-valid.xml ubl-creditnote-valid.xml \
			cii-invoice-valid.xml ubl-invoice-with-attachment.xml facturx-invoice-valid.pdf
	@echo "The stack stays up: 'source .run/env' to use it, 'make down' to stop it."

## Start Kafka, PostgreSQL, Keycloak and the services (both platforms' with PLATFORMS=2).
up: install
	$(BIN)/python deploy/local/stack.py up

## Stop everything the stack started, platform B's services included.
down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/local/stack.py down; fi

status: install
	$(BIN)/python deploy/local/stack.py status

## Whole suite: starts what it needs (unless KAFKA_BOOTSTRAP_SERVERS and
## DATABASE_URL are set) and stops what it started.
test: install
	$(BIN)/python deploy/local/stack.py test -- $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_manifests.py

## Container images with podman (docs/deploy.md): the Debian base is made
## with mmdebstrap when missing; no registry is needed. Neither `make run`
## nor `make test` needs them.
export CONTAINERS_CONF ?= $(CURDIR)/deploy/container/containers.conf
IMAGES_ARGS ?=
images: install
	$(BIN)/python scripts/images.py build $(IMAGES_ARGS)

## The services as containers (`podman kube play` of deploy/k8s/overlays/local)
## against the stack's Kafka, PostgreSQL and Keycloak; prints each sample's
## final status. `make undeploy-local` removes the pods.
deploy-local: images
	$(BIN)/python deploy/local/stack.py infra
	$(BIN)/python scripts/deploy_local.py deploy

undeploy-local:
	@if [ -x $(BIN)/python ]; then $(BIN)/python scripts/deploy_local.py undeploy; fi

## The end-to-end journeys against the services run from the image, started
## by testcontainers through podman's API socket (tests/containers.py). The
## two suites that restart or add service processes themselves are left out.
TEST_IMAGES_ARGS ?= tests/e2e --ignore=tests/e2e/test_telemetry.py --ignore=tests/e2e/test_trace_in_memory.py
test-images: images
	$(BIN)/python deploy/local/stack.py test-images -- $(TEST_IMAGES_ARGS) $(PYTEST_ARGS)

## The scale-out curve (docs/performance.md, "Scale-out"): validate as 1, 2
## and 4 containers of 0.5 CPU, at 6 then 12 partitions, one open-loop load.
## Needs a stack whose topics have at most 6 partitions (a new .run).
SCALE_OUT_ARGS ?= --json scale-out.json
scale-out: images up
	$(BIN)/python scripts/scale_out.py $(SCALE_OUT_ARGS)

## The pipeline as one compose project (deploy/compose/, docs/deploy.md):
## Kafka, PostgreSQL and the collector from the project's own images, host
## networking on ports apart from the local stack's. OIDC_ISSUER (and
## OIDC_CA_FILE) name the token issuer. podman-compose comes from the lock
## (Debian bookworm's 1.0.3 cannot do network_mode: host).
COMPOSE := $(BIN)/podman-compose -f deploy/compose/compose.yaml -p invoicing-compose
compose-images: install
	$(BIN)/python scripts/images.py build --only app --only kafka --only postgres --only collector

compose-up: compose-images
	$(BIN)/python deploy/compose/prepare.py
	$(COMPOSE) up -d

compose-ps: install
	$(COMPOSE) ps

compose-down:
	@if [ -x $(BIN)/podman-compose ]; then $(COMPOSE) down; fi

compose-clean:
	@if [ -x $(BIN)/podman-compose ]; then $(COMPOSE) down -v; fi
	@if [ -x $(BIN)/python ]; then $(BIN)/python deploy/compose/prepare.py --clean; fi

proto: install
	$(BIN)/python scripts/protogen.py generate

proto-check: install
	$(BIN)/python scripts/protogen.py check

## Load test: starts the stack when needed, then `invoicectl bench` (docs/performance.md).
BENCH_ARGS ?= --count 5000 --json bench-report.json
bench: install
	$(BIN)/python deploy/local/stack.py up
	. $${STACK_RUN_DIR:-.run}/env && $(BIN)/invoicectl directory import samples/directory.csv \
		&& $(BIN)/invoicectl directory import-services samples/directory-services.csv \
		&& $(BIN)/invoicectl bench $(BENCH_ARGS)

## About a minute on 2 cores: a closed-loop calibration measures the
## capacity, then an open loop at half of it gives the latency percentiles
## (end to end and per hop). No baselines, to stay within the minute.
BENCH_QUICK_ARGS ?= --mode open --rate auto --fraction 0.5 --count 2400 --calibrate-count 800 --no-baselines
bench-quick: install
	$(BIN)/python deploy/local/stack.py up
	. $${STACK_RUN_DIR:-.run}/env && $(BIN)/invoicectl directory import samples/directory.csv \
		&& $(BIN)/invoicectl directory import-services samples/directory-services.csv \
		&& $(BIN)/invoicectl bench $(BENCH_QUICK_ARGS)

## Fault injection: starts the stack when needed, then every scenario of
## scripts/chaos.py (at most 20 minutes); results in docs/reliability.md.
CHAOS_ARGS ?=
chaos: install
	$(BIN)/python deploy/local/stack.py up
	. $${STACK_RUN_DIR:-.run}/env && $(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

clean: down
	@# PostgreSQL data may live outside .run when the postgres account cannot enter the repo.
	@if [ -L .run/postgres ]; then rm -rf "$$(readlink .run/postgres)"; fi
	rm -rf .run
