# fpnlab: two commands on a fresh machine.
#   make lab   set everything up, then open the course in JupyterLab
#   make test  set everything up, then run the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
# nbgrader shells out to alembic & co.: the venv's bin/ must be on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.fpnlab-setup
KERNEL := fpnlab
LAB_PORT ?= 8888

.PHONY: setup system lab lab-instructor test test-fast release site bench clean

## setup: .venv with the pinned packages, fpnlab (editable) and the notebooks' kernel. A second run does nothing.
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (fpnlab)" >/dev/null
	@touch $@

## system: Debian packages the tests use (headless Chromium, bubblewrap), installed when missing.
system:
	@bash scripts/system-packages.sh

## lab: set up, copy the lessons into workspace/ (never over your work), then JupyterLab there with the course's kernel (headless: open the URL it prints).
lab: setup
	$(PY) -m fpnlab.cli lessons --no-browser --port=$(LAB_PORT) \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## lab-instructor: set up, then JupyterLab on the repository itself with nbgrader's tools (Create Assignment, formgrader).
lab-instructor: setup
	jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/lessons \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## test: set up, then every test (notebooks, nbgrader round trips, browser included).
test: setup system
	$(PY) -m pytest --durations=15

## test-fast: the unit tests only (no notebooks, no browser).
test-fast: setup
	$(PY) -m pytest -m "not slow and not browser" --durations=10

## release: regenerate lessons/ from solutions/ with nbgrader.
release: setup
	$(PY) -m autograder.release

## site: the released lessons as a static website (Jupyter Book 1, offline) in build/site/_build/html.
site: setup
	$(PY) -m autograder.site

## bench: speed and cost figures (prints a table, writes bench/results.json).
bench: setup system
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
