# The two commands of the README: `make demo` and `make test`. Each creates .venv the first time.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint protos bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	touch $@

demo: $(VENV)/.installed  ## server on the embedded default + a demo training job
	$(VENV)/bin/runstream demo

test: lint  ## lint, type-check, layer contracts, protos up to date, then the test suite
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/gen_protos.py --check

protos: $(VENV)/.installed  ## regenerate src/runstream/wire/proto from protos/
	$(PY) scripts/gen_protos.py

bench: $(VENV)/.installed  ## benchmarks/ingest.py against the machine's PostgreSQL and Redis
	$(PY) benchmarks/ingest.py
