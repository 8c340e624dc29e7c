# halite: `make test` sets everything up and runs the whole suite; `make demo` shows it working.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lint test test-core test-integration demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tests,postgres,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check halite_core salt tests bench scripts
	$(VENV)/bin/ruff format --check halite_core salt tests bench scripts
	$(VENV)/bin/mypy halite_core

test: lint
	$(VENV)/bin/pytest tests

test-core: $(STAMP)
	$(VENV)/bin/pytest tests -m "not integration"

test-integration: $(STAMP)
	$(VENV)/bin/pytest tests -m integration

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/engine.py
	$(PY) bench/listing.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
