# make demo: set up and run the default demo matrix.  make test: set up and run the tests.
# Both create .venv themselves; nothing touches a model or dataset hub.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# A CPU build of torch where there is no GPU (this pin resolves to the local CPU wheel here); installed first so
# that nothing else pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test setup clean
demo: $(VENV)/.installed
	$(BIN)/harness matrix run

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

clean:
	rm -rf $(VENV) results/harness.duckdb* results/runs results/data results/bases results/logs
