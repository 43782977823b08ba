# tapeserve: `make serve` and `make test` set everything up on a fresh machine (python3 + make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint format clean demo-model gpu-check

# (setup.py builds the C extension: a change to it or to its source reinstalls)
$(STAMP): pyproject.toml $(wildcard setup.py serve/protocol/_jsonnum.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

# Always the bundled examples, as the README says: a ./models left by the walkthrough is served
# with `tapeserve serve` (its default) or `--model-repository models`.
serve: $(STAMP)
	$(BIN)/tapeserve serve --model-repository examples/models

# The bundled demo model: the digits CNN trained with a fixed seed, exported, verified on the
# held-out split and written to examples/models/digits/ (the file is committed; see docs/export.md).
DEMO_SEED := 0
demo-model: $(STAMP)
	$(BIN)/tapeserve train digits-cnn --seed $(DEMO_SEED) --out build/demo/digits-cnn --no-progress
	$(BIN)/tapeserve export build/demo/digits-cnn --repository examples/models --name digits \
	  --version 1 --overwrite --max-batch-size 64

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# On a machine with an NVIDIA GPU: CUDA libraries, provider, CPU/GPU agreement, throughput, GPU
# memory per worker, NVML gauges and the CUDA container, one summary table (docs/deploy.md).
# Installs the `cuda` extra (CUDA/cuDNN wheels) into the venv first; without a GPU it skips.
# GPU_CHECK_ARGS: e.g. --device cuda:1, --image REGISTRY/tapeserve:0.1.0-cuda, --no-container.
gpu-check: $(STAMP)
	PYTHON=$(BIN)/python deploy/gpu-check.sh --install-cuda $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
