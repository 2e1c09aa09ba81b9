# `make demo` and `make test` are the whole set-up: each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,uvloop,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/agents.py

lint: $(STAMP)
	$(VENV)/bin/ruff check aioeventstore tests examples perf
	$(VENV)/bin/mypy aioeventstore tests examples perf

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) perf/bench_append.py $(BENCH_ARGS)

# SIGKILL torture for as long as asked: `make soak SECONDS=600` (tests/torture.py).
SECONDS ?= 600
soak: $(STAMP)
	$(PY) tests/torture.py --seconds $(SECONDS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
