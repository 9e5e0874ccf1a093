# model-poller: the two commands a newcomer runs.
#   make test   everything: virtualenv, Go-built services (cached in ~/.cache), the whole suite
#   make demo   the main job end to end, locally
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: test demo venv test-binaries lint crd clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

test-binaries:
	bash hack/build-test-binaries.sh >/dev/null

# The CRD is generated from api/model_poller_api/crd.py (a test checks it stays so).
crd: venv
	$(PY) -m model_poller_api.crd crds/modeldeployments.modelpoller.dev.yaml deploy/chart/crds/modeldeployments.modelpoller.dev.yaml

lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy api/model_poller_api poller/model_poller operator/model_poller_operator

test: venv test-binaries lint
	MODEL_POLLER_TEST_BIN="$$(bash hack/build-test-binaries.sh)" $(PY) -m pytest $(PYTEST_ARGS)

demo: venv test-binaries
	MODEL_POLLER_TEST_BIN="$$(bash hack/build-test-binaries.sh)" $(PY) hack/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
