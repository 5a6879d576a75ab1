# One entry point for set-up, running, tests, lint and benchmarks. Every target installs what it needs.
UV_VERSION := 0.13.8
UV := python3 -m uv
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1

.PHONY: setup up test test-fast lint bench

.venv/.synced: pyproject.toml uv.lock
	python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen
	touch $@

setup: .venv/.synced

up: setup
	$(UV) run --frozen kb up

test: setup
	$(UV) run --frozen pytest

test-fast: setup
	$(UV) run --frozen pytest -m "not e2e"

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

bench: setup
	$(UV) run --frozen kb bench ingest --json
