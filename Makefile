# halite: `make test` sets everything up and runs the whole suite; `make demo` shows it working.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv postgresql chromium lint test test-sqlite test-postgresql test-core test-integration demo screenshots bench clean

# The distribution was called halite before it became saltext-halite: a checkout still
# installed under the old name would register halite's loader directories twice.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tests,postgres,dev]'
	@if $(PY) -m pip show halite 2>/dev/null | grep -qxF 'Editable project location: $(CURDIR)'; \
	then $(PY) -m pip uninstall --quiet --yes halite; fi
	rm -rf halite.egg-info
	touch $(STAMP)

venv: $(STAMP)

# The PostgreSQL server binaries the suite starts its throw-away server from (the
# distribution's package; the tests never use a system-wide server).
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
		echo "PostgreSQL server binaries present"; \
	else \
		echo "installing the distribution's PostgreSQL server package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends postgresql >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check halite_core salt tests bench scripts
	$(VENV)/bin/ruff format --check halite_core salt tests bench scripts
	$(VENV)/bin/mypy halite_core

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
chromium:
	@if command -v chromium >/dev/null; then \
		echo "Chromium present"; \
	else \
		echo "installing the distribution's chromium package"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium >/dev/null; \
	fi

# The page's own browser tests (-m page) and the tests that are the same over either
# database (-m once) run in the SQLite pass only; both passes test every query and write.
# The two passes run side by side (each waits on daemons and a database much of the
# time, and the machine has two cores), each into its own log and temporary directory;
# the logs are printed as each pass ends.
test: lint postgresql chromium
	@logs=$$(mktemp -d /tmp/halite-test.XXXX); echo "the two passes log into $$logs"; \
	( $(VENV)/bin/pytest tests --basetemp=$$logs/s > $$logs/sqlite.log 2>&1; \
	  echo $$? > $$logs/sqlite.rc; \
	  flock $$logs/print.lock sh -c "echo '===== the SQLite pass'; cat $$logs/sqlite.log" ) & \
	( HALITE_TEST_DB=postgresql $(VENV)/bin/pytest tests -m "not page and not once" \
	    --basetemp=$$logs/p > $$logs/postgresql.log 2>&1; \
	  echo $$? > $$logs/postgresql.rc; \
	  flock $$logs/print.lock sh -c "echo '===== the PostgreSQL pass'; cat $$logs/postgresql.log" ) & \
	wait; sqlite=$$(cat $$logs/sqlite.rc); postgresql=$$(cat $$logs/postgresql.rc); \
	rm -rf $$logs; echo "SQLite pass: exit $$sqlite; PostgreSQL pass: exit $$postgresql"; \
	test "$$sqlite" = 0 && test "$$postgresql" = 0

test-sqlite: $(STAMP) chromium
	$(VENV)/bin/pytest tests

test-postgresql: $(STAMP) postgresql chromium
	HALITE_TEST_DB=postgresql $(VENV)/bin/pytest tests

test-core: $(STAMP)
	$(VENV)/bin/pytest tests -m "not integration"

test-integration: $(STAMP)
	$(VENV)/bin/pytest tests -m integration

demo: $(STAMP)
	$(PY) scripts/demo.py

# The README's screenshots, from the demo's page in Debian's Chromium.
screenshots: $(STAMP) chromium
	$(PY) scripts/demo.py --screenshots docs

bench: $(STAMP) postgresql
	$(PY) bench/ingest.py
	$(PY) bench/engine.py
	$(PY) bench/listing.py
	$(PY) bench/load.py
	$(PY) bench/listing_pg.py
	$(PY) bench/retention.py
	$(PY) bench/fanin.py
	$(PY) bench/fleet.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
