# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=

.PHONY: run test test-sqlite test-postgresql lint format translations extract-messages bench clean deps

deps: $(STAMP) $(NPM_STAMP) translations

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,postgresql,redis,production]"
	touch $(STAMP)

$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

translations: $(STAMP)
	$(BIN)/pybabel compile --use-fuzzy -d his/translations -D messages >/dev/null

extract-messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext -k N_ -o his/translations/messages.pot --no-location --sort-output his fhir booking billing telehealth pathology
	$(BIN)/pybabel update -i his/translations/messages.pot -d his/translations --no-fuzzy-matching --omit-header

run: deps
	$(BIN)/vetinh db upgrade
	$(BIN)/vetinh demo --if-empty
	$(BIN)/vetinh run --host $(HOST) --port $(PORT)

# The whole suite on SQLite, then again on PostgreSQL when VETINH_TEST_DATABASE_URL is set.
test: deps
	$(MAKE) --no-print-directory test-sqlite
	@if [ -n "$$VETINH_TEST_DATABASE_URL" ]; then \
		$(MAKE) --no-print-directory test-postgresql; \
	else \
		echo "VETINH_TEST_DATABASE_URL is not set: the PostgreSQL pass is skipped."; \
	fi

test-sqlite: deps
	VETINH_TEST_BACKEND=sqlite $(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgresql: deps
	VETINH_TEST_BACKEND=postgresql $(BIN)/python -m pytest -m "not e2e and not backend_free" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: deps
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) node_modules build dist *.egg-info
