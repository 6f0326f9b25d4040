# kerbside: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing (Debian packages, a .venv, the MicroPython VM)
# and are quick when everything is already there.

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.kerbside-installed
NPM_STAMP := tests/mpy/node_modules/.kerbside-installed
APT_PACKAGES := mosquitto mosquitto-clients influxdb influxdb-client nodejs npm python3-venv
PYTEST_ARGS ?=

.PHONY: help test demo bench lint system-deps deps clean

help:
	@echo "make demo   run brokers, collector and a simulated fleet, then print results"
	@echo "make test   install everything and run the whole test suite"
	@echo "make bench  run the benchmarks (slow; never part of make test)"
	@echo "make lint   ruff"

# Debian packages, only when a binary is missing (apt-get update is slow).
system-deps:
	@missing=""; \
	for b in mosquitto mosquitto_pub influxd influx node npm; do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; \
	done; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install $(APT_PACKAGES)"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(PY_STAMP): pyproject.toml | system-deps
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(NPM_STAMP): tests/mpy/package.json tests/mpy/package-lock.json | system-deps
	cd tests/mpy && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deps: system-deps $(PY_STAMP) $(NPM_STAMP)

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check .

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	$(VENV)/bin/kerbside demo $(DEMO_ARGS)

bench: deps
	$(PY) bench/collector.py
	$(PY) bench/fleet.py
	$(PY) bench/firmware.py

clean:
	rm -rf $(VENV) tests/mpy/node_modules .pytest_cache .hypothesis
