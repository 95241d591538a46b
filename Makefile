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

.PHONY: install test test-unit demo lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,es,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

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
