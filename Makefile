# Tally developer entry points. `make test` on a fresh Debian 12 machine installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
CHECKOV := $(TOOLS)/checkov/bin/checkov
NODE_TOOLS := $(TOOLS)/node
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.lock requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	@touch $@

$(CHECKOV): requirements-checkov.lock
	@test -x $(TOOLS)/checkov/bin/python || $(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.lock
	@touch $@

$(NODE_TOOLS)/node_modules/.installed: $(NODE_TOOLS)/package.json $(NODE_TOOLS)/package-lock.json
	PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed ## create .venv with the pinned runtime and test dependencies

.PHONY: deps
deps: venv $(CHECKOV) $(NODE_TOOLS)/node_modules/.installed ## everything the tests need (system packages too, as root)
	./scripts/install-test-deps.sh

.PHONY: test
test: deps ## run the whole test suite (lint, unit, end-to-end, container) with coverage
	$(MAKE) lint
	$(BIN)/pytest --cov=app --cov-report=term --cov-report=xml --junitxml=test-results/junit.xml $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: venv ## the suite without the slow end-to-end tests
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

.PHONY: e2e
e2e: deps ## only the end-to-end suite: the stack on a private Docker Engine (docs/container-testing.md)
	$(BIN)/pytest tests/e2e -s $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff, ruff format, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: run
run: venv ## run the app locally on http://127.0.0.1:8000 (SQLite, development mode)
	TALLY_ENV=development $(BIN)/flask --app app db upgrade
	TALLY_ENV=development PORT=8000 $(BIN)/gunicorn --config gunicorn.conf.py --reload 'app:create_app()'

.PHONY: lock
lock: venv ## re-pin requirements*.lock from requirements*.in
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock requirements.in
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.lock requirements-dev.in

.PHONY: bench
bench: deps ## side-by-side benchmark: GET / vs hello-world vs pgbench at 1 k / 1 M / 10 M visitors (docs/capacity.md)
	$(BIN)/python -m bench.run

HOST ?= http://127.0.0.1:8000
SHAPE ?= smoke
.PHONY: loadtest
loadtest: venv ## Locust suite against HOST (default local gunicorn), SHAPE=smoke|step|spike|soak
	$(BIN)/python -m loadtest --host $(HOST) --shape $(SHAPE)

.PHONY: drills
drills: deps ## resilience drills under load, full length (~5 min): replica loss, restarts, DB outage, exhaustion, bad input
	$(BIN)/python -m drills --target native --action all --json drill-results.json
