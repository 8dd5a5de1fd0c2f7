# Developer entry points for govmdm; `make` (or `make help`) lists them.

PYTHON ?= $(if $(shell command -v python3.11 2>/dev/null),python3.11,python3)
VENV := .venv
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test demo check fmt clean distclean

help: ## list targets
	@awk -F ":.*## " '/^[a-z-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# Re-installs only when the dependency declarations change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/pip install -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install govmdm with dev tools

test: install ## run pytest on TEST_WORKERS processes (extra options via PYTEST_ARGS=...)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: install ## the nightly DAG through Airflow on the sample city; again = next night
	$(VENV)/bin/govmdm demo

check: install ## formatting, lint and type checks
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: install ## reformat and apply safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove var/ and caches (keeps .venv)
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
