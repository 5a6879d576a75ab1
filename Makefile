# One entry point for set-up, running, tests, lint and benchmarks. Every target installs what it needs.
UV_VERSION := 0.13.8
UV := python3 -m uv
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: setup browser docker ldap prometheus deploy-tools up test test-fast lint bench eval

# All extras: the 1.5B model parts (`kb up`) and the 0.5B ones (tests); uv sync is exact, so one set for both.
.venv/.synced: pyproject.toml uv.lock
	python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --all-extras
	touch $@

setup: .venv/.synced

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

up: setup
	$(UV) run --frozen kb up

test: setup browser docker ldap prometheus deploy-tools
	$(UV) run --frozen pytest

test-fast: setup docker ldap prometheus deploy-tools
	$(UV) run --frozen pytest -m "not e2e and not answers"

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

bench: setup
	$(UV) run --frozen kb bench ingest --json

eval: setup
	$(UV) run --frozen kb eval retrieval --dataset ../shared/evalsets/prom_runbooks --json
