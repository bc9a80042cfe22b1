# Pushdesk: `make run` sets up and starts everything; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/pushdesk
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
# `make coverage` measures coverage with pytest-cov (settings: pyproject.toml) and checks it once both
# passes are done; `make test` runs the same suite without it (coverage's tracing costs a fifth to a third).
COV ?=
# Test files run in parallel processes, each with its own PostgreSQL and Redis database.
TEST_WORKERS ?= 3

.PHONY: run setup test coverage lint format migrate demo bench clean schema

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed ($(PYTHON) not found); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

migrate: setup
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py demo_setup

# Embedded mode: SQLite + django-q2's ORM broker + the push simulator, demo data, admin on :8000.
run: demo
	@echo "Admin: http://127.0.0.1:8000/admin/   API docs: http://127.0.0.1:8000/api/v1/docs/"
	@$(PY) manage.py run_embedded

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The whole suite on PostgreSQL and Redis (the real servers), browser tests in headless Chromium.
test: lint
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$CI" = "true" ]; then echo "ERROR: /usr/bin/chromium is missing: browser tests cannot run (apt-get install chromium)"; exit 1; \
	  else echo "WARNING: /usr/bin/chromium is missing: browser tests will be skipped (apt-get install chromium)"; fi; \
	fi
	@[ -z "$(COV)" ] || $(VENV)/bin/coverage erase
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(COV) $(PYTEST_ARGS)
	@# The embedded default (SQLite) keeps working: tests marked `embedded` run again on SQLite
	@# (with coverage, theirs is added to the first pass's).
	@tmp=$$(mktemp -d); DATABASE_URL=sqlite:///$$tmp/test.sqlite3 REDIS_URL= PUSHDESK_VAR_DIR=$$tmp \
	  $(VENV)/bin/pytest -m embedded -p no:cacheprovider -q $(COV) $(if $(COV),--cov-append) $(PYTEST_ARGS); rc=$$?; rm -rf $$tmp; \
	  [ $$rc -eq 0 ] || [ $$rc -eq 5 ]
	@# Branch coverage of the apps and config, worker and web subprocesses included; fails below the floor.
	@[ -z "$(COV)" ] || $(PY) -m tests.coverage_report

# The whole suite as `make test` runs it, measuring branch coverage; fails below the floor.
coverage:
	@$(MAKE) --no-print-directory test COV="--cov --cov-report= --cov-fail-under=0"

# The committed OpenAPI schema, regenerated (tests/test_schema.py checks it is current). Generated
# for PostgreSQL, whose integer columns bound the fields (it connects to nothing).
schema: setup
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml

# Every benchmark in turn; each prints one JSON line (see the README's Performance table).
bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
