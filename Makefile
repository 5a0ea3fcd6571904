# The two commands people need: `make run` and `make test`. Everything else is their parts.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
BASELINE := proto-baseline/release-0.1.0.binpb
PYTEST_ARGS ?=

.PHONY: help setup run test check lint typecheck imports buf-lint buf-breaking proto proto-check \
        pytest bench baseline redis-check nats-check clean

help:
	@echo "make run    set up everything and run the trading pipeline demo"
	@echo "make test   set up everything and run every check and test"
	@echo "make proto  regenerate the generated code from proto/"
	@echo "make bench  run the benchmarks (JSON on stdout)"

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node >= 18) is required: install Node.js from your package manager"; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' || { echo "Node >= 18 is required; found $$(node --version)"; exit 1; }
	@# npm ci: installs exactly the committed lock file and never rewrites it, so a run leaves
	@# the clone clean. The lock lists every platform's optional buf binary; after changing
	@# package.json, regenerate it with 'npm install' and commit it.
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed

redis-check:
	@if [ -z "$${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
	  echo "redis-server (>= 6.2) was not found: install it (Debian/Ubuntu: 'sudo apt-get install redis-server'; macOS: 'brew install redis') or set REDIS_URL."; exit 1; fi

nats-check:
	@if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then \
	  echo "nats-server (>= 2.9) was not found: install it (Debian/Ubuntu: 'sudo apt-get install nats-server'; macOS: 'brew install nats-server'); the JetStream engine's tests start their own."; exit 1; fi

proto: setup
	scripts/gen_proto.sh

proto-check: setup
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	scripts/gen_proto.sh "$$tmp" >/dev/null 2>&1; \
	if ! diff -r gen/python "$$tmp/gen/python" >/dev/null || ! diff -r clients/node/src/gen "$$tmp/clients/node/src/gen" >/dev/null; then \
	  diff -r gen/python "$$tmp/gen/python" | head -20 || true; \
	  diff -r clients/node/src/gen "$$tmp/clients/node/src/gen" | head -20 || true; \
	  echo "generated code is stale: run 'make proto' and commit the result"; exit 1; \
	fi; echo "generated code is fresh"

buf-lint: setup
	$(BUF) lint

buf-breaking: setup
	$(BUF) breaking --against $(BASELINE)

# Records the current schema as the release baseline that buf-breaking compares against.
baseline: setup
	$(BUF) build -o $(BASELINE)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

imports: setup
	$(VENV)/bin/lint-imports

check: buf-lint buf-breaking proto-check lint typecheck imports

pytest: setup redis-check nats-check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: check pytest

run: setup redis-check
	$(VENV)/bin/quantum run --duration 15

bench: setup redis-check
	$(PY) -m bench all

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
