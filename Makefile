# Vickrey — developer commands. Everything runs from a local virtualenv (.venv) and local services.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?= 60s
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv native clean-native up down status topics test test-unit lint demo bench loadtest clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(BIN)/vickrey: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# PYTHONWARNINGS: setuptools warns about editable installs in general, with a banner
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -e '.[dev]'
	@touch $(BIN)/vickrey

# What core/native.py compiles: the mypyc modules (its MODULES list) and the Rust crate of fastpath/ (stdlib only, no venv needed).
NATIVE_SOURCES := $(shell $(PY) core/native.py sources)

build/native-manifest.json: $(BIN)/vickrey core/native.py $(NATIVE_SOURCES)
	$(BIN)/python -m core.native build -q

venv: $(BIN)/vickrey build/native-manifest.json ## create .venv, install Vickrey with its dev tools, compile the hot path

native: $(BIN)/vickrey ## compile the hot path again (mypyc, and fastpath/ (Rust) with cargo when installed; core/native.py)
	$(BIN)/python -m core.native build -q

clean-native: ## remove the compiled modules: the same source then runs interpreted
	@test -x $(BIN)/python && $(BIN)/python -m core.native clean || true

BROKERS ?= 1
REDIS ?= single

up: ## start local Kafka (KRaft, 127.0.0.1:9092; BROKERS=3: three brokers on 9092-9094) and Redis (127.0.0.1:6379; REDIS=cluster: a Redis Cluster on 7000-7005)
	@BROKERS=$(BROKERS) REDIS=$(REDIS) bash ops/up.sh

down: ## stop what `make up` started (and nothing else)
	@bash ops/down.sh

status: ## show whether Kafka and Redis answer
	@bash ops/up.sh --status

topics: venv up ## create every topic (idempotent)
	$(BIN)/vickrey topics create

test: venv up ## the whole test suite against real Kafka and Redis
	$(BIN)/pytest -q tests

test-unit: venv ## tests that need no services
	$(BIN)/pytest -q tests -m "not integration"

CARGO := $(shell command -v cargo || ls $(HOME)/.cargo/bin/cargo 2>/dev/null)

lint: venv ## ruff, mypy (strict on every package), the import layers (import-linter); rustfmt and clippy on fastpath/ when installed
	$(BIN)/ruff check .
	$(BIN)/mypy core schemas auction autopilot streams vickrey loadtests
	$(BIN)/lint-imports
	@if [ -n "$(CARGO)" ] && $(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1; then \
	  $(CARGO) fmt --manifest-path fastpath/Cargo.toml --check && \
	  CARGO_TARGET_DIR=build/cargo PYO3_PYTHON=$(CURDIR)/$(BIN)/python $(CARGO) clippy --quiet --release --locked \
	    --manifest-path fastpath/Cargo.toml -- -D warnings && echo "fastpath/: rustfmt and clippy clean"; \
	else echo "fastpath/: rustfmt or clippy not installed, not checked"; fi

demo: venv ## the whole story on a generated chat stream; stops what it started (KEEP=1 keeps it running)
	@was_up=0; bash ops/up.sh --status >/dev/null 2>&1 && was_up=1; \
	bash ops/up.sh || exit 1; \
	$(BIN)/python -m vickrey.demo $(if $(KEEP),--keep-running,); status=$$?; \
	if [ $$was_up = 0 ] && [ -z "$(KEEP)" ]; then echo "stopping the services the demo started (KEEP=1 keeps them)"; bash ops/down.sh; fi; \
	exit $$status

bench: venv up ## measure engine, worker and streams side by side; writes bench-results.json (CLUSTER=1: also on three brokers and a Redis Cluster)
	$(BIN)/python -m loadtests.bench $(if $(CLUSTER),--cluster,)

loadtest: venv up ## Locust headless against the running stack (DURATION=20s)
	$(BIN)/python -m loadtests.run --duration $(DURATION)

clean: clean-native ## remove the virtualenv, caches and compiled modules (keeps .local/ Kafka jars and data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/native build/native-manifest.json build/cargo
