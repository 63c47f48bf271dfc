# Caravan: `make demo` runs the main job, `make test` runs the tests. Both install what
# they need first (Python packages in .venv, npm packages, Debian packages), so a fresh
# clone works with nothing installed by hand. Installs are stamped and happen once.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# All local state (blocks, chain, ledger, Dagster, Label Studio, the services' pid and log files)
# lives under CARAVAN_HOME; pipelines/settings.py and scripts/*.sh read the same variable.
CARAVAN_HOME ?= $(CURDIR)/.caravan
override CARAVAN_HOME := $(abspath $(CARAVAN_HOME))
export CARAVAN_HOME
export DAGSTER_HOME ?= $(CARAVAN_HOME)/dagster
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test lint demo bench dagster-home dagster-dev labelstudio-install labelstudio-start labelstudio-stop anvil-start anvil-stop services-stop clean

setup: $(VENV)/.installed node_modules/.installed /usr/bin/ipfs_cid /usr/bin/chromium /usr/bin/pg_ctlcluster dagster-home .venv-labelstudio/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first, exactly pinned: the CPU wheel (a looser pin pulls CUDA wheels).
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	# Without its declared torchvision (see pyproject.toml's dev extra for why).
	$(VENV)/bin/pip install --quiet --no-deps kronfluence==1.0.1
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

/usr/bin/ipfs_cid:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ipfs-cid

# Headless Chromium for the UI test (Debian's package; no browser download).
/usr/bin/chromium:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# PostgreSQL server binaries for the PostgreSQL ledger tests (tests/services/postgres.py runs its own cluster).
/usr/bin/pg_ctlcluster:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/caravan demo

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# Label Studio 1.23 in its own venv (its pins must not fight the project's); see scripts/labelstudio.sh.
.venv-labelstudio/.installed:
	PYTHON=$(PYTHON) scripts/labelstudio.sh install

labelstudio-install: .venv-labelstudio/.installed

labelstudio-start: .venv-labelstudio/.installed
	PYTHON=$(PYTHON) scripts/labelstudio.sh start

labelstudio-stop:
	scripts/labelstudio.sh stop

anvil-start: node_modules/.installed $(VENV)/.installed
	scripts/anvil.sh start
	$(VENV)/bin/caravan chain deploy

anvil-stop:
	scripts/anvil.sh stop

services-stop: labelstudio-stop anvil-stop

# The Dagster UI on 127.0.0.1:3000 over the same state as `make demo`.
dagster-dev: setup
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

clean:
	rm -rf "$(CARAVAN_HOME)"
