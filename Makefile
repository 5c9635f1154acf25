# polyglot-catalog: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export POLYGLOT_CACHE_DIR ?= $(CURDIR)/.cache
export POLYGLOT_DATA_DIR ?= $(CURDIR)/.data
export AIRFLOW_HOME ?= $(CURDIR)/airflow_home
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM ?= 2
export AIRFLOW__API__HOST := 127.0.0.1

.PHONY: setup model demo airflow test lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an open requirement would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) model

model: $(STAMP)
	$(VENV)/bin/polyglot-catalog build-model

demo: setup
	$(PY) scripts/run_demo.py

# The Airflow UI on the embedded defaults (127.0.0.1:$(AIRFLOW_PORT)), both DAGs unpaused; prints
# the URL and the login. Ctrl-C stops it.
AIRFLOW_PORT ?= 8080
airflow: setup
	$(PY) scripts/run_airflow.py --port $(AIRFLOW_PORT)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Only the Postgres + Redis + CeleryExecutor deployment test (docs/DEPLOYMENT.md); `make test` runs it
# too. Needs the Debian packages postgresql and redis-server, else it is skipped with the reason.
.PHONY: deployment-test
deployment-test: setup
	$(PY) -m pytest -m deployment -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(AIRFLOW_HOME) $(POLYGLOT_DATA_DIR) reports
