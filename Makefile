# The two commands a new user needs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install serve test test-quick

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
	$(BIN)/pytest -q -m "not e2e"
