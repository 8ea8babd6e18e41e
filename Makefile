# The front door: `make demo` and `make test` work on a fresh machine with only Python 3.11+.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrapped
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv system-deps sandbox-up sandbox-down demo test pytest lint sanity docs bench constraints clean

help:
	@echo "make demo          start the sandbox and rotate the demo service's credential"
	@echo "make test          install everything into .venv and run every gate and test"
	@echo "make sandbox-up    start the platform API sandbox and Kubernetes emulator (.sandbox/env)"
	@echo "make sandbox-down  stop them"
	@echo "make bench         the collection against the guide's shell scripts (benchmarks/results.md)"

$(STAMP): requirements.txt requirements-test.txt constraints.txt hack/bootstrap.sh
	bash hack/bootstrap.sh

venv: $(STAMP)

sandbox-up: venv
	$(PY) -m tests.sandbox up $(SANDBOX_ARGS)

sandbox-down:
	@if [ -x $(PY) ]; then $(PY) -m tests.sandbox down; else echo "sandbox was not running"; fi

demo: venv
	$(PY) -m tests.sandbox up $(SANDBOX_ARGS)
	bash hack/demo.sh

system-deps:
	bash hack/system-deps.sh

# Every gate, cheapest first, so a lint slip fails in seconds rather than after the suite.
test: venv system-deps
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory docs
	$(MAKE) --no-print-directory pytest

lint: venv
	bash hack/lint.sh

sanity: venv
	bash hack/sanity.sh

docs: venv
	bash hack/docs.sh

# Two worker processes, a test file to each (its tests in order, its module fixtures shared); the
# suite mostly waits on rollouts, so two halve it on two cores. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

pytest: venv system-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests

bench: venv system-deps
	bash hack/bench.sh

constraints:
	rm -rf .cache/constraints-venv && python3 -m venv .cache/constraints-venv
	.cache/constraints-venv/bin/pip install -q -r requirements.txt -r requirements-test.txt
	{ sed -n '1,2p' constraints.txt; .cache/constraints-venv/bin/pip freeze; } > constraints.new && mv constraints.new constraints.txt

clean: sandbox-down
	rm -rf .venv .collections .cache .sandbox .pytest_cache .ruff_cache tests/output docs/build
