# The two commands of the README: `make demo` and `make test`. Both create .venv and install on first use.
# `make test-fast` is the everyday loop (lint + the tests not marked slow); `make test` is what CI runs.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint docs docs-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fewstep demo

test: $(STAMP)
	bash scripts/install_test_browser.sh
	bash scripts/install_optimum_env.sh
	bash scripts/install_runtime_env.sh
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -m "not slow"

# ruff (lint + format), the import layers (import-linter, contracts in pyproject.toml) and mypy (strict on the
# shared basics and the runtime)
lint: $(STAMP)
	$(PY) -m ruff check fewstep tests benchmarks scripts
	$(PY) -m ruff format --check fewstep tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

# the documentation site (mkdocs.yml); --strict turns a broken link or a missing page into an error
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

clean:
	rm -rf $(VENV) .venv-optimum .venv-runtime .pytest_cache .ruff_cache .mypy_cache out site
