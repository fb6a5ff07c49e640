# consentgate — the README's commands. Everything installs into ./.venv from the locked files.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install run test reliability bench load lint fmt clean

install: $(STAMP)

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/consentgate serve --host $(HOST) --port $(PORT) --demo

# The suite on every core (pytest-xdist): each worker process has its own PostgreSQL
# cluster, temp dirs and ports; worksteal evens out the long end-to-end tests.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

# The reliability suite in full (more kills, bigger campaigns; prints what each scenario
# checked). `make test` runs its short form.
reliability: install
	CONSENTGATE_RELIABILITY=full $(BIN)/python -m pytest -q -s tests/reliability

# The HTTP API at fixed rates from separate processes (lookups, single-event ingest, signed
# CMP webhooks) on SQLite and PostgreSQL: throughput, p50, p99, errors into bench/results.json.
load: install
	$(BIN)/python -m bench.load

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
