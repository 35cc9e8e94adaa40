# The README's commands. Each does its own set-up on a fresh machine (virtual env, pinned CPU torch, package).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GAME ?= Alien
METHOD ?= zoo
ARGS ?=

.PHONY: setup run test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,vision]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed  ## the main job: make run GAME=Alien METHOD=zoo ARGS="--seed 1"
	$(PY) -m rlzoo_transfer.train --game $(GAME) --method $(METHOD) $(ARGS)

test: $(VENV)/.installed  ## the test suite (~18 minutes on 2 idle cores, set-up included)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m rlzoo_transfer.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
