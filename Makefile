PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU wheel pinned first so that pip never resolves a multi-GB CUDA build of torch
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint demo bench models clean

install:
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev]"

test: install
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench
	OMP_NUM_THREADS=2 $(PYTHON) -m pytest tests

lint:
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench

demo: install
	bash scripts/demo.sh

bench: install
	$(PYTHON) bench/run_all.py

models: install
	bash scripts/make_models.sh

clean:
	rm -rf demo_out .pytest_cache build dist
