# crilab: the two commands are `make lab` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888

.PHONY: install lab test lint bench clean

# The stamp is newer than pyproject.toml once the venv matches it: repeated runs are instant.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "crilab needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'sudo apt-get install python3-venv'"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/crilab gen --check
	@touch $(STAMP)

install: $(STAMP)

# JupyterLab on notebooks/; each notebook starts its own fake CRI runtime (or set
# CONTAINER_RUNTIME_ENDPOINT to use a real one). As root, JupyterLab needs --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	CRILAB_FUZZ_EXAMPLES=1000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
