# Every target sets up what it needs; `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
PORT ?= 5000
HOST ?= 127.0.0.1
SERVER_DB ?= postgresql://postgres@127.0.0.1/mlflow
export SERVER_DB
ARTIFACTS ?= server-artifacts
SERVER_WORKERS ?= 1

.PHONY: help setup lock repro push pull test test-all test-integration test-browser test-hosts lint format ui server repeat sweep promote dashboard ladder bench bench-page predict clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo "Offline? MNIST_MIRROR=/folder/with/the/four/.gz/files make repro"

# uv installs requirements.lock: every package pinned, each file checked against its sha256.
# uv itself comes from pip, so the machine's pip settings (index, mirror, certificates) apply.
UV_VERSION := 0.13.9
LOCK := requirements.lock
UV := $(BIN)/uv

$(BIN)/.uv-$(UV_VERSION):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq uv==$(UV_VERSION)
	touch $@

# --compile-bytecode: pip writes .pyc files on install, uv does not by default; without them a
# process under PYTHONDONTWRITEBYTECODE (set on CI machines) compiles TensorFlow anew each start
$(BIN)/.installed: $(LOCK) pyproject.toml | $(BIN)/.uv-$(UV_VERSION)
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --require-hashes $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(BIN)/.installed ## Create .venv and install requirements.lock's pinned packages, compiled (about 30 s)

lock: | $(BIN)/.uv-$(UV_VERSION) ## Re-pin requirements.lock from pyproject.toml (keeps each pin that still fits)
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' --quiet -o $(LOCK)

repro: setup ## Run the DVC pipeline: download -> preprocess -> train -> evaluate -> report
	dvc repro

# dvc push/pull through digits.tools.remote: an SSH remote's host key is checked (known_hosts)
push: setup ## Upload data and models to the DVC remote (default: ../digits-dvc-storage; SSH: host key checked)
	python -m digits.tools.remote push

pull: setup ## Fetch data and models from the DVC remote into the workspace (SSH: host key checked)
	python -m digits.tools.remote pull

test: setup ## Run the test suite on every core (synthetic data, no network; under 3 min on 2 cores)
	pytest -n auto --dist loadgroup --durations=15

test-all: setup ## Also the slow tests: accuracy targets on real MNIST (set MNIST_MIRROR)
	pytest -m ''

test-integration: setup ## Kills, signals, servers, two workers, two hosts (netns), clones + DVC remote, sshd, full disks
	pytest -m integration -n auto --dist loadgroup --durations=10

test-hosts: setup ## Sweep workers on two hosts (network namespaces, root); restarts PostgreSQL twice
	pytest -m hosts --durations=5

test-browser: setup ## The MLflow UI in Debian's Chromium via Playwright (apt-get install chromium)
	pytest -m browser --durations=5

lint: setup ## ruff check and format check
	ruff check .
	ruff format --check .

.PHONY: docs
docs: setup ## Build the documentation site with mkdocs (--strict: a broken link fails) -> site/
	mkdocs build --strict --site-dir site

format: setup ## Apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

.PHONY: docs-config
docs-config: setup ## Regenerate docs/configuration.md from the schema's field descriptions
	python -m digits.tools.configdoc --write

# with MLFLOW_TRACKING_URI on a server, its own UI: the address, without credentials, and no local UI
ui: setup ## Open the MLflow UI on the project's store (http://127.0.0.1:$(PORT)); a tracking server's: its address
	@if [[ "$$MLFLOW_TRACKING_URI" =~ ^https?:// ]]; then \
	  python -c 'import os, urllib.parse as u; p = u.urlsplit(os.environ["MLFLOW_TRACKING_URI"]); \
	    port, path = (f":{p.port}" if p.port else ""), p.path.rstrip("/"); \
	    print(f"the runs are on the tracking server in MLFLOW_TRACKING_URI: open {p.scheme}://{p.hostname}{port}{path}/ (no local UI started)")'; \
	else \
	  python -c 'from pathlib import Path; from digits.lib.config import load_params; \
	    from digits.lib.environment import Environment; from digits.lib.tracking.store import ui_address; \
	    print("open", ui_address(load_params().mlflow, Path.cwd(), Environment.read(), "http://127.0.0.1:$(PORT)"))' && \
	  mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(PORT); \
	fi

# The server's database URLs and admin password reach it through the environment (export
# SERVER_DB, MLFLOW_AUTH_ADMIN_PASSWORD), never a command line; users: digits.tools.server user add
server: setup ## MLflow tracking server with users (export SERVER_DB=, MLFLOW_AUTH_ADMIN_PASSWORD=); ARTIFACTS=, HOST=, PORT=
	python -m digits.tools.server serve \
	  --artifacts-destination '$(abspath $(ARTIFACTS))' --host $(HOST) --port $(PORT) \
	  --workers $(SERVER_WORKERS)

repeat: setup ## Train K seeds of params.yaml's configuration, each evaluated (K=, else train.repeats) -> reports/repeat/, report
	dvc repro preprocess
	python -m digits.tools.repeat $(if $(K),--repeats $(K))
	dvc repro
	dvc repro --force --single-item report  # spread.json is read when present, not a DVC dep

# A STORAGE URL may hold a password: it reaches the tools in their environment ($OPTUNA_STORAGE),
# never on a command line, which make echoes and `ps` shows
STORAGE_ENV = $(if $(STORAGE),OPTUNA_STORAGE="$$STORAGE")
SWEEP_ARGS = $(if $(WORKERS),--workers $(WORKERS)) $(if $(N_TRIALS),--n-trials $(N_TRIALS)) \
  $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(STUDY),--study $(STUDY)) $(if $(SPACE),--space $(SPACE))
STUDY_ARGS = $(if $(STUDY),--study $(STUDY)) $(if $(SPACE),--space $(SPACE))

sweep: setup ## Optuna sweep (N_TRIALS= TIMEOUT= WORKERS= STUDY= STORAGE= SPACE=cnn); resumes a study
	dvc repro preprocess
	$(STORAGE_ENV) python -m digits.tools.sweep run $(SWEEP_ARGS)

promote: setup ## Write the sweep's best trial into params.yaml (then: make repro)
	$(STORAGE_ENV) python -m digits.tools.sweep promote $(STUDY_ARGS)

dashboard: setup ## optuna-dashboard on the sweep's storage (http://127.0.0.1:8080)
	$(STORAGE_ENV) python -m digits.tools.dashboard --port 8080

ladder: setup ## Course-notes configurations as DVC experiments -> reports/ladder.md (~1 h)
	dvc repro preprocess
	python -m digits.tools.ladder $(if $(ONLY),--only '$(ONLY)')
	python -m digits.tools.benchpage --write

bench: setup ## Train stage vs bare Keras, TPE+pruning vs random sweeps (N_TRIALS= WORKERS=) -> reports/bench/ (~1 h)
	dvc repro
	python -m digits.tools.bench overhead
	python -m digits.tools.bench sweep $(if $(WORKERS),--workers $(WORKERS)) $(if $(N_TRIALS),--n-trials $(N_TRIALS))
	python -m digits.tools.benchpage --write

bench-page: setup ## Rewrite docs/benchmarks.md from reports/ladder.json and reports/bench/*.json
	python -m digits.tools.benchpage --write

predict: setup ## Predict digits: make predict FILES="a.png b.jpg batch.npy" [MODEL=models:/mnist-digits@champion] [TRUST=1]
	@test -n "$(FILES)" || { echo 'usage: make predict FILES="a.png b.npy" [MODEL=path-or-uri] [TOP=3] [TRUST=1]'; exit 2; }
	python -m digits.tools.predict $(FILES) $(if $(MODEL),--model '$(MODEL)') $(if $(TOP),--top $(TOP)) $(if $(TRUST),--trust-model)

clean: ## Remove generated data, models, runs (keeps the DVC cache)
	rm -rf data/raw data/processed models mlflow.db mlartifacts
