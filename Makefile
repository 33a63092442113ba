# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# what they need; nothing but python3, cargo and the package registries is assumed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-rust test-python venv build build-release wheel lint lint-static typecheck fmt clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

## build: the extension (dev profile, dependencies optimised) into .venv
build: venv
	$(BIN)/maturin develop --quiet

## build-release: the extension with the release profile (LTO) into .venv
build-release: venv
	$(BIN)/maturin develop --release --quiet

## wheel: the release wheel users install (abi3: one wheel for CPython >= 3.9) into dist/
wheel: venv
	$(BIN)/maturin build --release --out dist

## demo: generate a sample ImageFolder, pack it, iterate it, compare with torchvision
demo: build-release
	$(BIN)/python examples/demo.py

## test: lint, then every test: Rust (cargo test --workspace, examples built) and Python
## (pytest, including test_wheel.py: the wheel installed into a fresh venv without Rust)
test: lint test-rust test-python

test-rust:
	cargo test --workspace

test-python: build
	$(BIN)/python -m pytest -q

## lint: rustfmt, clippy (all targets), ruff (lint + format), then the type stubs against the
## built extension (mypy stubtest) and mypy over the package
lint: lint-static typecheck

lint-static: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check python benchmarks examples vantix-pack/tools
	$(BIN)/ruff format --check python benchmarks examples vantix-pack/tools

typecheck: build
	$(BIN)/python -m mypy.stubtest vantix
	$(BIN)/python -m mypy python/vantix

fmt: venv
	cargo fmt --all
	$(BIN)/ruff format python benchmarks examples vantix-pack/tools

clean:
	cargo clean
	rm -rf $(VENV) demo-data data dist
