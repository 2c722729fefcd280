# ketch developer targets. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help install check lint typecheck layers test test-unit test-root bench bench-engine bench-network fmt

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: ## packages + .venv with ketch installed (what ./bootstrap does)
	./bootstrap install

check: lint typecheck layers ## ruff, mypy --strict, import layers

lint: ## ruff
	$(VENV)/bin/ruff check src tests benchmarks

fmt: ## ruff format + autofix
	$(VENV)/bin/ruff check --fix src tests benchmarks

typecheck: ## mypy --strict on src
	$(VENV)/bin/mypy

layers: ## import-linter layer contract
	$(VENV)/bin/lint-imports

test: ## whole suite (root tests skip when not root)
	$(PY) -m pytest

test-unit: ## unit tier only (no root)
	$(PY) -m pytest tests/unit

test-root: ## integration tier (root, real kernel)
	$(PY) -m pytest tests/integration

bench: ## side-by-side benchmarks (ketch vs runc vs crun)
	$(PY) benchmarks/runtime_run.py

bench-engine: ## ketchd vs dockerd and podman, same docker CLI (needs --install-anchors once)
	$(PY) benchmarks/engine.py

bench-network: ## iperf3 throughput and bridge start cost, ketchd vs dockerd
	$(PY) benchmarks/network.py
