# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
EPOCHS ?= 4
DATABASE_URL ?=

.PHONY: install demo test test-unit test-postgres test-not-slow api worker bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Graft needs Python 3.11+"' || exit 1
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtual environment: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

# DATABASE_URL=postgresql+psycopg://... runs the demo on PostgreSQL instead of the SQLite file under var/.
demo: install
	$(if $(DATABASE_URL),GRAFT_DATABASE_URL='$(DATABASE_URL)' )$(BIN)/graft demo $(DATA) --epochs $(EPOCHS)

# The browser and service tests run in two processes, each module and backend (SQLite, PostgreSQL) on one of them
# (much of their time is spent waiting on workers and services; tests.helpers.SHARED_CORES gives each worker one
# torch thread); the `serial` one (a restart of the shared PostgreSQL) runs alone after them; then the unit tests.
test: install
	$(BIN)/python -m pytest tests/browser tests/service -m "not serial" -n 2 --dist loadgroup
	$(BIN)/python -m pytest tests/browser tests/service -m serial
	$(BIN)/python -m pytest tests/unit -n auto

# No Redis, PostgreSQL or worker processes: storage, checkpoints, datasets, the training core, archives,
# validation, the state machine on SQLite, the import contracts and the wheel. Under a minute on 2 cores.
# On every core (pytest-xdist): on 2 cores one process took 67 s, two take about 50 s (measured 2026-11-29).
test-unit: install
	$(BIN)/python -m pytest tests/unit -m "not postgres" -n auto

# The PostgreSQL service tier alone: every flow's PostgreSQL run and the PostgreSQL-only tests.
test-postgres: install
	$(BIN)/python -m pytest tests/browser tests/service -m "postgres and not serial" -n 2 --dist loadgroup
	$(BIN)/python -m pytest tests/browser tests/service -m "postgres and serial"

# make test without the real-data accuracy tests (marked slow); it still starts every service.
test-not-slow: install
	$(BIN)/python -m pytest tests/browser tests/service -m "not serial and not slow" -n 2 --dist loadgroup
	$(BIN)/python -m pytest tests/browser tests/service -m "serial and not slow"
	$(BIN)/python -m pytest tests/unit -m "not slow" -n auto

# Both upgrade the database schema first (a no-op when current): the API and workers refuse a schema that is behind.
api: install
	$(BIN)/graft db upgrade
	$(BIN)/graft api

worker: install
	$(BIN)/graft db upgrade
	$(BIN)/graft worker

clean:
	rm -rf var .pytest_cache
