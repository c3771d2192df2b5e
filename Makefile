# The two commands of the README: `make demo` and `make test`. Each creates .venv the first time.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Two workers, a test file each at a time: most integration tests wait on servers, not on a core.
INTEGRATION_ARGS ?= -n 2 --dist loadfile


.PHONY: demo test test-unit lint docs buf-lint ui ui-check protos schema bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	touch $@

demo: $(VENV)/.installed  ## server on the embedded default + a demo training job
	$(VENV)/bin/runstream demo

test: lint  ## lint, type-check, layer contracts, protos up to date, then the unit tests, then the integration suite
	$(PY) -m pytest tests/unit
	$(PY) -m pytest tests/integration $(INTEGRATION_ARGS)

test-unit: $(VENV)/.installed  ## the unit tests alone: no services, a few seconds
	$(PY) -m pytest tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/gen_settings_docs.py --check
	$(PY) scripts/gen_api_docs.py --check
	$(PY) scripts/gen_cli_docs.py --check
	$(PY) scripts/gen_architecture.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory buf-lint ui-check; \
	elif [ -n "$$CI" ]; then echo "npm is missing: buf lint cannot run (apt-get install npm)"; exit 1; \
	else echo "skipping buf lint of protos/: npm is missing (apt-get install npm)"; fi

docs: $(VENV)/.installed  ## regenerate the reference pages from the code, then serve the site at 127.0.0.1:8000
	$(PY) scripts/gen_settings_docs.py
	$(PY) scripts/gen_api_docs.py
	$(PY) scripts/gen_cli_docs.py
	$(PY) scripts/gen_architecture.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

buf-lint: node_modules/.installed  ## the protos against buf's STANDARD rules (buf.yaml), buf pinned in package.json
	node_modules/.bin/buf lint

ui: node_modules/.installed  ## copy the web UI's pinned JavaScript (uPlot) from node_modules into the package
	$(PY) scripts/build_ui.py

ui-check: node_modules/.installed
	$(PY) scripts/build_ui.py --check

protos: $(VENV)/.installed  ## regenerate src/runstream/wire/proto from protos/
	$(PY) scripts/gen_protos.py

schema: $(VENV)/.installed  ## regenerate src/runstream/server/storage/schema.sql from the migrations (needs PostgreSQL)
	$(PY) scripts/gen_schema.py

bench: $(VENV)/.installed  ## benchmarks/ingest.py against the machine's PostgreSQL and Redis
	$(PY) benchmarks/ingest.py
