# Two entry points a new user needs: `make run` (the main job) and `make test`.
# Both create the virtual environment first; pip takes torch from the local disk
# where one is configured (see README).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv run test fast lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# make run CONFIG=configs/other.yaml PORT=5050: another search config, another port for the embedded server
CONFIG ?= configs/smoke.yaml
PORT ?=

run: venv
	$(BIN)/vaesearch search --config $(CONFIG) --name $(basename $(notdir $(CONFIG)))-$$(date +%Y%m%d-%H%M%S) \
		$(if $(strip $(PORT)),--server-port $(strip $(PORT)))

test: lint
	$(BIN)/python -m pytest

fast: venv  # the edit-test loop: everything but the end-to-end runs with real servers
	$(BIN)/python -m pytest -m "not slow" -q

lint: venv  # ruff's lint and format check, and mypy over the packages (pyproject's [tool.mypy])
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/efficiency.py
	$(BIN)/python benchmarks/search_efficiency.py

clean:
	rm -rf $(VENV) runs .pytest_cache
