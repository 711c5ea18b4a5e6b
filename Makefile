# One-command entry points. Everything runs offline once the wheels are cached.
PY      ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST  := $(BIN)/python -m pytest
CONFIG  ?= configs/smoke.yaml

.PHONY: setup model data demo notebooks report test test-slow test-all lint bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install stonklib with pinned dependencies

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

model: setup  ## fetch the embedded SmolLM2-135M-Instruct into models/
	$(BIN)/stonk model fetch smollm2

data: setup  ## build the bundled S&P 500 dataset into data/built/sp500
	@test -f data/built/sp500/summary.json || $(BIN)/stonk data build --source sp500

demo: model data  ## the main job: setup, model, data, notebooks 01-05 -> reports/<run>/index.html
	$(BIN)/stonk report --config $(CONFIG)

notebooks report: demo  ## same as demo

test: model  ## fast tests (the default; well under 15 minutes on 2 cores)
	$(PYTEST) -q -m "not slow"

test-slow: model data  ## slow tests: the real SmolLM2 (generate, evaluate, warm-up), the notebooks under papermill
	$(PYTEST) -q -m "slow"

test-all: model data  ## everything CI runs
	$(PYTEST) -q

lint:  ## ruff
	$(BIN)/ruff check stonklib tests benchmarks

bench: model  ## CPU benchmarks (reward throughput, CPU GRPO step vs TRL)
	$(BIN)/python benchmarks/reward_throughput.py
	$(BIN)/python benchmarks/grpo_throughput.py --shape cpu

clean:  ## remove built data, runs and reports (keeps models/ and .venv)
	rm -rf data/built runs reports/*/
