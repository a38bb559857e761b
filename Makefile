# Two commands set everything up on a fresh machine (Python 3.10+, network to PyPI):
#   make repro   - create .venv with pinned dependencies, then run the pipeline (dvc repro)
#   make test    - create .venv, then lint, types and every test but the end-to-end ones (minutes)
# plus `make test-all`: the same with the end-to-end tests too (dvc in scratch repositories; CI runs both).
# plus `make demo`: the whole pipeline offline on a CPU in minutes (numbers mean nothing).
# dvc runs each stage's `python -m diffaug...` with the python on PATH: run dvc commands of your own
# inside the venv (`source .venv/bin/activate`); the targets below put .venv/bin on PATH themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv repro demo check test test-all report clean-demo

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# A failed run leaves nothing behind: the prepare stage removes the data/raw/ it made for a CIFAR
# download that failed (an archive placed there by hand is kept).
repro: venv
	$(BIN)/dvc repro

demo: venv
	$(BIN)/python -m diffaug.sandbox.demo

report: venv
	$(BIN)/python -m diffaug.report --out reports

# Lint and import order (ruff), types (mypy, src/).
check: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The tests on every core (pytest-xdist), the 15 slowest listed. `test` leaves out the end-to-end ones
# (marked slow: dvc runs in a scratch repository, a stage SIGKILLed and rerun); `test-all` runs them too.
test: check
	$(BIN)/python -m pytest -q -n auto --durations=15 -m "not slow"

test-all: check
	$(BIN)/python -m pytest -q -n auto --durations=15

clean-demo:
	rm -rf demo
