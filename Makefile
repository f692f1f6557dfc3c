# One entry point per task. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help install lock audit compliance serve demo test lint typecheck policy-test policy-check bench clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install:  ## create .venv and install exactly requirements.lock (hashes checked), then the project
	scripts/setup

lock:  ## upgrade: re-resolve requirements.lock to the newest releases (uv), reinstall, run the tests
	scripts/lock

compliance: install  ## regenerate docs/compliance.md from the # carries: C-n tags
	$(PY) scripts/compliance.py

audit: install  ## pip-audit against requirements.lock: fails on a known vulnerability that has a fix
	$(PY) scripts/audit_deps.py

demo: install  ## run the service with demo data on http://127.0.0.1:8080
	$(VENV)/bin/pdp serve --demo

test: install  ## lint, type-check, policy suites and the whole test suite
	scripts/test

lint:  ## ruff
	$(VENV)/bin/ruff check .

typecheck:  ## mypy --strict
	$(VENV)/bin/mypy

policy-check:  ## load the policies, report syntax errors with file and line
	$(VENV)/bin/pdp policy check

policy-test:  ## run the YAML policy suites in policies/tests, with their coverage
	$(VENV)/bin/pdp policy test --coverage

bench: install  ## the whole benchmark: pdp beside raw oso, cedarpy and Cerbos, and the rest (benchmarks/run.py)
	$(PY) benchmarks/run.py --json benchmarks/last-run.json

clean:  ## remove the venv and local data
	rm -rf $(VENV) pdp-data .pytest_cache .mypy_cache .ruff_cache
