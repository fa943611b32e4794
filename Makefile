# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
EPOCHS ?= 4

.PHONY: install demo test test-unit test-fast api worker bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Graft needs Python 3.11+"' || exit 1
	@$(PYTHON) -m venv $(VENV) || { echo "cannot create a virtual environment: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

demo: install
	$(BIN)/graft demo $(DATA) --epochs $(EPOCHS)

# The browser and service tests share running services and go one at a time; the unit tests (private schemas and
# folders) run on every core: 112 s instead of about 200 s on 2 cores (measured 2026-11-29).
test: install
	$(BIN)/python -m pytest tests/browser tests/service
	$(BIN)/python -m pytest tests/unit -n auto

# No Redis, PostgreSQL or worker processes: storage, checkpoints, datasets, the training core, archives,
# validation, the state machine on SQLite, the import contracts and the wheel. Under a minute on 2 cores.
# On every core (pytest-xdist): on 2 cores one process took 67 s, two take about 50 s (measured 2026-11-29).
test-unit: install
	$(BIN)/python -m pytest tests/unit -m "not postgres" -n auto

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Both upgrade the database schema first (a no-op when current): the API and workers refuse a schema that is behind.
api: install
	$(BIN)/graft db upgrade
	$(BIN)/graft api

worker: install
	$(BIN)/graft db upgrade
	$(BIN)/graft worker

clean:
	rm -rf var .pytest_cache
