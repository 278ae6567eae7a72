# Every target sets up what it needs; `make` alone lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
PORT ?= 5000

.PHONY: help setup repro test test-all lint format ui sweep promote dashboard ladder bench predict clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'
	@echo "Offline? MNIST_MIRROR=/folder/with/the/four/.gz/files make repro"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed ## Create .venv and install the pinned dependencies (about 2 minutes)

repro: setup ## Run the DVC pipeline: download -> preprocess -> train -> evaluate -> report
	dvc repro

test: setup ## Run the test suite on every core (synthetic data, no network; ~3 min on 2 cores)
	pytest -n auto --dist loadgroup --durations=15

test-all: setup ## Also the slow tests: accuracy targets on real MNIST (set MNIST_MIRROR)
	pytest -m ''

lint: setup ## ruff check and format check
	ruff check .
	ruff format --check .

format: setup ## Apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

ui: setup ## Open the MLflow UI on the project's store (http://127.0.0.1:$(PORT))
	mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(PORT)

SWEEP_ARGS = $(if $(WORKERS),--workers $(WORKERS)) $(if $(N_TRIALS),--n-trials $(N_TRIALS)) \
  $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(STUDY),--study $(STUDY)) \
  $(if $(STORAGE),--storage '$(STORAGE)') $(if $(SPACE),--space $(SPACE))
STUDY_ARGS = $(if $(STUDY),--study $(STUDY)) $(if $(STORAGE),--storage '$(STORAGE)') \
  $(if $(SPACE),--space $(SPACE))

sweep: setup ## Optuna sweep (N_TRIALS= TIMEOUT= WORKERS= STUDY= STORAGE= SPACE=cnn); resumes a study
	dvc repro preprocess
	python -m digits.tools.sweep run $(SWEEP_ARGS)

promote: setup ## Write the sweep's best trial into params.yaml (then: make repro)
	python -m digits.tools.sweep promote $(STUDY_ARGS)

dashboard: setup ## optuna-dashboard on the sweep's storage (http://127.0.0.1:8080)
	optuna-dashboard --port 8080 "$$(python -m digits.tools.sweep storage $(STUDY_ARGS))"

ladder: setup ## Course-notes configurations as DVC experiments -> reports/ladder.md (~1 h)
	dvc repro preprocess
	python -m digits.tools.ladder $(if $(ONLY),--only $(ONLY))

bench: setup ## Train stage vs bare Keras, TPE+pruning vs random sweeps (N_TRIALS= WORKERS=) -> reports/bench/ (~1 h)
	dvc repro
	python -m digits.tools.bench overhead
	python -m digits.tools.bench sweep $(if $(WORKERS),--workers $(WORKERS)) $(if $(N_TRIALS),--n-trials $(N_TRIALS))

predict: setup ## Predict digits: make predict FILES="a.png b.jpg batch.npy" [MODEL=models:/mnist-digits@champion]
	@test -n "$(FILES)" || { echo 'usage: make predict FILES="a.png b.npy" [MODEL=path-or-uri] [TOP=3]'; exit 2; }
	python -m digits.tools.predict $(FILES) $(if $(MODEL),--model '$(MODEL)') $(if $(TOP),--top $(TOP))

clean: ## Remove generated data, models, runs (keeps the DVC cache)
	rm -rf data/raw data/processed models mlflow.db mlartifacts
