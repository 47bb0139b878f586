# Quick start (see README): `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, pinned, so that pip picks the local wheels on this machine.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/ppllava-hermes demo

test: install-dev
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check ppllava_hermes train evaluate scripts tests
