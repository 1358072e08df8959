# Satchel: the two commands of the README, and a few more.
#   make serve   set up and run Satchel on its embedded default (SQLite + local objects)
#   make test    set up and run lint, type checks and the whole test suite on real services
#   make bench   benchmarks (SATCHEL_BENCH_SCALE=small|full)
#   make profile one benchmark under py-spy: a flame graph in var/bench/

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check --quiet

.DEFAULT_GOAL := help
.PHONY: help serve test bench profile lint typecheck clean

help:
	@echo "make serve   run Satchel on http://$${SATCHEL_BIND:-127.0.0.1:8000}/ (SQLite + local store in ./var)"
	@echo "make test    lint, type checks and the whole test suite (starts SeaweedFS and PostgreSQL)"
	@echo "make bench   benchmarks; SATCHEL_BENCH_SCALE=small|full"
	@echo "make profile BENCH=ingest_and_read   one benchmark (pytest -k) under py-spy: var/bench/profile-BENCH.svg"
	@echo "make lint | make typecheck | make clean"

# Debian packages are installed only when missing (as root, or through sudo).
define ensure_debs
	@if command -v dpkg >/dev/null 2>&1; then \
	  missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	    else echo "Satchel needs these Debian packages:$$missing (install them as root)"; exit 1; fi; \
	    echo "installing Debian packages:$$missing"; \
	    $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	      --no-install-recommends --no-upgrade $$missing >/dev/null; \
	  fi; \
	fi
endef

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Satchel needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.serve-installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(call ensure_debs,libmagic1)
	$(PIP) install -e .
	@touch $@

$(VENV)/.test-installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(call ensure_debs,libmagic1 chromium postgresql)
	$(PIP) install -e '.[postgres,test,dev]'
	@touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(VENV)/bin/satchel init
	exec $(VENV)/bin/satchel serve

test: $(VENV)/.test-installed
	bash tests/run-suite.sh

bench: $(VENV)/.test-installed
	bash tests/run-suite.sh --bench

# BENCH picks the benchmarks (pytest -k); PROFILE_OPTIONS go to py-spy record (--gil, --idle,
# --rate N, --native). The run's figures are saved apart: the sampling slows it down.
BENCH ?= ingest_and_read
profile: $(VENV)/.test-installed
	SATCHEL_BENCH_PROFILE="var/bench/profile-$(BENCH).svg" SATCHEL_PROFILE_OPTIONS="$(PROFILE_OPTIONS)" \
	  SATCHEL_BENCH_RESULTS="var/bench/profile-$(BENCH).json" bash tests/run-suite.sh --bench -k "$(BENCH)"

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
