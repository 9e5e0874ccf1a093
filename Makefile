# model-poller: the two commands a newcomer runs.
#   make test   everything: virtualenv, Go-built services (cached in ~/.cache), the whole suite
#   make demo   the main job end to end, locally
SHELL := /bin/bash
# The locks are resolved for Python 3.11: prefer that interpreter where it is installed.
PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
# What the venv is built from: a changed pyproject or lock reinstalls it.
VENV_INPUTS := pyproject.toml requirements/build.txt requirements/test.txt
STAMP := $(VENV)/.installed-$(shell cat $(VENV_INPUTS) | sha1sum | cut -c1-12)
# Every package hash-checked against the lock, wheels only (nothing compiled on the way).
PIP_LOCKED := $(PY) -m pip install --quiet --require-hashes --only-binary=:all:
PYTEST_ARGS ?=
LOCK_ARGS ?=

.PHONY: test demo venv lock test-binaries lint crd clean

# The build tools first (pinned pip, setuptools, wheel), then the test lock, then the project
# itself without dependencies, built by those pinned tools rather than by unpinned ones that
# build isolation would fetch.
venv: $(STAMP)
$(STAMP): $(VENV_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/build.txt
	$(PIP_LOCKED) -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --check-build-dependencies -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Regenerate requirements/*.txt from pyproject.toml (hack/lock.py says how);
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest allowed version.
lock: venv
	$(PY) hack/lock.py $(LOCK_ARGS)

test-binaries:
	bash hack/build-test-binaries.sh >/dev/null

# The CRD is generated from api/model_poller_api/crd.py (a test checks it stays so).
crd: venv
	$(PY) -m model_poller_api.crd crds/modeldeployments.modelpoller.dev.yaml deploy/chart/crds/modeldeployments.modelpoller.dev.yaml

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy api/model_poller_api poller/model_poller operator/model_poller_operator
	$(VENV)/bin/hadolint Dockerfile.poller Dockerfile.operator
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv test-binaries lint
	MODEL_POLLER_TEST_BIN="$$(bash hack/build-test-binaries.sh)" $(PY) -m pytest $(PYTEST_ARGS)

demo: venv test-binaries
	MODEL_POLLER_TEST_BIN="$$(bash hack/build-test-binaries.sh)" $(PY) hack/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache

.PHONY: docs
docs: venv  # docs/reference/ from the CRD schema, the poller's flags, the operator's settings
	$(PY) hack/gen_reference.py docs/reference
