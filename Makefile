# kerbside: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what is missing (Debian packages, a .venv, the MicroPython VM)
# and are quick when everything is already there. `make demo` installs only
# what the demo runs; `make test` adds the dev extras and the MicroPython VM.

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.kerbside-base
DEV_STAMP := $(VENV)/.kerbside-dev
VM_STAMP := tests/mpy/node_modules/.kerbside-installed
PYTEST_ARGS ?=

# What each command runs, as binary:Debian package. Only missing binaries are installed, one
# package each: asking apt for a whole list fails on machines whose Node.js comes from NodeSource
# (its nodejs package conflicts with Debian's npm), and apt-get update is slow. npm is not needed:
# tests/mpy/install.py fetches the pinned MicroPython VM itself; only node runs it. The fleet page is
# tested in Debian's headless chromium (through chromium-driver), the alerting rules with promtool
# (Debian's prometheus package), the node labels' QR codes decoded with zbarimg. The clustered-broker
# tests run a local RabbitMQ cluster (kerbside/devcluster.py) from Debian's rabbitmq-server.
DEMO_BINS := python3:python3 mosquitto:mosquitto influxd:influxdb influx:influxdb-client
TEST_BINS := $(DEMO_BINS) mosquitto_pub:mosquitto-clients node:nodejs chromium:chromium chromedriver:chromium-driver \
	promtool:prometheus zbarimg:zbar-tools rabbitmq-server:rabbitmq-server

.PHONY: help test test-slow demo bench lint system-deps system-deps-demo deps demo-deps clean

help:
	@echo "make demo   run brokers, collector and a simulated fleet, then print results"
	@echo "make test   install everything and run the test suite (all but the slow tests)"
	@echo "make test-slow  the tests that take minutes (the cluster kill test); CI runs both"
	@echo "make bench  run the benchmarks (slow; never part of make test)"
	@echo "make lint   ruff"

# $(1): binary:package pairs. Never asks for nodejs when node is there, whoever packaged it.
# Packages with a service (mosquitto, rabbitmq-server) would start it at install: a policy-rc.d that
# refuses every start is put in place for the install (unless the machine has one) and removed after,
# so the tests' own brokers find their ports and epmd free.
define install_missing
	@missing=""; \
	for pair in $(1); do \
	  b=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$pkg"; \
	done; \
	if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
	  missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; \
	  if [ "$$(id -u)" != 0 ]; then \
	    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	    else echo "run as root, or as root: apt-get install$$missing"; exit 1; fi; \
	  fi; \
	  rcd=/usr/sbin/policy-rc.d; ours=""; \
	  if [ ! -e $$rcd ]; then \
	    printf '#!/bin/sh\n# kerbside make: no service starts while packages install\nexit 101\n' | $$sudo tee $$rcd >/dev/null && \
	    $$sudo chmod 755 $$rcd && ours=1; \
	  fi; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  rc=$$?; [ -z "$$ours" ] || $$sudo rm -f $$rcd; exit $$rc; \
	fi
endef

system-deps-demo:
	$(call install_missing,$(DEMO_BINS))

# A bare Debian root (debootstrap) has no /etc/hosts: selenium reaches chromedriver at "localhost" by name,
# and RabbitMQ's nodes are name@localhost. Every installed Debian has this line.
system-deps:
	$(call install_missing,$(TEST_BINS))
	@getent hosts localhost >/dev/null || { \
	  echo "adding '127.0.0.1 localhost' to /etc/hosts: chromedriver and RabbitMQ expect the name"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  echo "127.0.0.1 localhost" | $$sudo tee -a /etc/hosts >/dev/null; }

$(BASE_STAMP): pyproject.toml | system-deps-demo
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e .
	@touch $@

$(DEV_STAMP): $(BASE_STAMP) pyproject.toml | system-deps
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(VM_STAMP): tests/mpy/package-lock.json tests/mpy/install.py | system-deps
	python3 tests/mpy/install.py
	@touch $@

demo-deps: system-deps-demo $(BASE_STAMP)

deps: system-deps $(DEV_STAMP) $(VM_STAMP)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

test: deps lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Tests that take minutes (the cluster kill test, tests/cluster/test_cluster_kill.py); .ci/run runs them after `make test`.
test-slow: deps
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: demo-deps
	$(VENV)/bin/kerbside demo $(DEMO_ARGS)

bench: deps
	$(PY) bench/collector.py
	$(PY) bench/fleet.py
	$(PY) bench/firmware.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) tests/mpy/node_modules .pytest_cache .hypothesis
