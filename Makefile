# Everything runs from a local virtual environment that the first target creates.
# CPU machines get the local CPU build of torch (installed first, so nothing pulls CUDA).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export MRTL_DATA_DIR ?= $(abspath ../shared/data)
# Transparent huge pages for torch's large CPU allocations (a weight tensor per step).
export THP_MEM_ALLOC_ENABLE ?= 1

.PHONY: install run test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The main job on the embedded default (synthetic data); pass ARGS="dataset=climate ..." to change.
run: install
	$(PY) -m mrtl_lightning $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/bench.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache bench.json bench_runs
