# Quick start (see README): `make demo` and `make test` work on a fresh machine.
# Installs are reproducible: every package is pinned by constraints.txt (the set the suite last passed with;
# regenerate it with scripts/freeze_constraints.sh). pyproject.toml states the ranges CI also tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
# torch and torchvision are installed first, pinned, so that pip picks the local wheels on this machine.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-dev demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What the demo needs: the core (inference) and the CLIP extra for prompt-guided pooling.
install: $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[clip]"

install-dev: $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev]"

demo: install
	$(BIN)/ppllava-hermes demo

test: install-dev
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check ppllava_hermes train evaluate scripts tests
