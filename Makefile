# neuronb: `make run` runs the built-in example pipeline, `make test` runs the tests.
# Both create the virtual environment in .venv and install neuronb into it when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXAMPLE ?= example
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test install browser postgres check export clean-example bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(VENV)/.installed: settings.ini setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	@test -f $(EXAMPLE)/pipeline.yaml || $(BIN)/neuronb init $(EXAMPLE) --example digits
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/neuronb run $(EXAMPLE)

# Debian's chromium for the browser tests (Playwright cannot download its own browser here).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# Debian's PostgreSQL server for the shared-database tests (they start a server of their own in a temporary folder).
# Outside CI a machine that cannot install it only skips those tests; in CI (CI=true) it is an error.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
	  || { test -z "$$CI" && echo "PostgreSQL could not be installed: the shared-database tests will be skipped"; }

test: install browser postgres
	@# one process per notebook: kernel-starting notebooks leave nothing behind for the next one
	@for nb in nbs/*.ipynb; do WANDB_MODE=disabled $(BIN)/nbdev_test --path $$nb --n_workers 0 --flags slow || exit 1; done; echo "notebook tests passed"
	WANDB_MODE=disabled $(BIN)/python -m pytest -q --durations=15 tests

# The notebooks are the source: exporting and cleaning them must not change the tree.
check: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	git status --porcelain -- nbs neuronb
	@test -z "$$(git status --porcelain -- nbs neuronb)" || { echo "nbdev_export/nbdev_clean changed the tree: run them and commit"; exit 1; }

export: install
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export

bench: install
	@for b in $$(ls bench/*.py | grep -v -e gpu_smoke -e _pngs -e _serve); do echo "== $$b"; WANDB_MODE=disabled $(BIN)/python $$b || exit 1; done
