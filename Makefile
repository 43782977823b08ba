# tapeserve: `make serve` and `make test` set everything up on a fresh machine (python3 + make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint format clean demo-model

$(STAMP): pyproject.toml
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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
