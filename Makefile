# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Prefect's home inside the checkout (git-ignored), no analytics, a longer start for its temporary
# API, cgc's logger in the run logs: every entry point sets these itself unless the user did
# (flows/__init__.py), so the commands in README behave the same with or without make.
export PREFECT_LOGGING_LEVEL ?= INFO
# The demo and the tests run on CPU; keep BLAS/OpenMP from oversubscribing 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: demo test bench serve stop venv browser clean-data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/install_env.py $(PY) '.[test,gdino]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m flows.benchmark --scenes synthetic

# The browser tests need Chromium: Debian's package, installed through apt when it is missing and
# we may install packages (root, or password-less sudo). Under CI=true a test that would skip for a
# missing dependency fails instead (tests/conftest.py), so a missing install step cannot hide.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		echo "installing Debian's chromium for the browser tests (apt-get)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "Chromium is missing and packages cannot be installed here: the browser tests will skip (and fail under CI=true)"; fi

test: $(STAMP) browser
	$(PY) -m pytest -q

bench: $(STAMP)
	@for b in benchmarks/*_bench.py benchmarks/*_check.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# A local Prefect server on 127.0.0.1 (SQLite in .prefect/), the process work pool, the deployment
# of prefect.yaml and one worker; `make stop` stops exactly those processes.
serve: $(STAMP)
	$(PY) -m flows.serve start

stop:
	$(PY) -m flows.serve stop

clean-data:
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	find reports -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
