# Two entry points: `make demo` (the whole pipeline) and `make test` (lint + test suite).
# Each creates .venv on first use and installs the pinned dependencies into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MovieLens 100K for tests and the demo; never committed (see README, Data).
ML100K ?= $(abspath ../shared/data/ml-100k)
DATA ?= $(if $(wildcard $(ML100K)/u.data),$(ML100K),)
OUT ?= runs/demo

export POCKETREC_ML100K := $(ML100K)
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/pocketrec demo $(if $(DATA),--data $(DATA),) --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs .pytest_cache
