# The two commands of the README: `make demo` and `make test`. Both create .venv and install on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fewstep demo

test: $(STAMP)
	bash scripts/install_test_browser.sh
	bash scripts/install_optimum_env.sh
	$(PY) -m ruff check fewstep tests benchmarks scripts
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check fewstep tests benchmarks scripts
	$(PY) -m ruff format --check fewstep tests benchmarks scripts

clean:
	rm -rf $(VENV) .venv-optimum .pytest_cache .ruff_cache out
