# Verbs for developers and CI. Everything runs inside $(VENV); pip's cache keeps re-creating it cheap.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: help build-dev build-prod build-prod-native lint test test-rust test-python run example bench bench-report clean

help:
	@echo "make run          install and run the default job (distill digits, IPC 10)"
	@echo "make test         install test dependencies and run every check (lint, cargo test, pytest)"
	@echo "make build-prod   build the release abi3 wheel for manylinux_2_28 (glibc >= 2.28) into dist/"
	@echo "make bench        run the asv suite against the installed package"

$(BIN)/maturin:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.7,<2"

# Optimised but quickly linked native module, plus the package's runtime and test dependencies.
build-dev: $(BIN)/maturin
	$(BIN)/maturin develop -q --profile fast --extras test,bench

# Portable wheel: linked with zig against glibc 2.28 (RHEL 8, Ubuntu 20.04 and later), abi3.
build-prod: $(BIN)/maturin
	$(PY) -m pip install -q "ziglang<1"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/maturin build --release --zig --compatibility manylinux_2_28 --out dist

# Wheel for this machine's glibc only (no zig needed).
build-prod-native: $(BIN)/maturin
	$(BIN)/maturin build --release --out dist

lint: build-dev
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches

test-rust:
	cargo test -p isa-core

test-python: build-dev
	$(BIN)/pytest -q

test: lint test-rust test-python

example: build-dev
	$(PY) examples/loss_example.py

run: build-dev
	$(BIN)/isa-distill distill

bench: build-dev
	cd benches && ../$(BIN)/asv run --python=same --quick --show-stderr

bench-report: build-dev
	$(PY) -m isa_distill.bench_report

clean:
	rm -rf $(VENV) target dist
