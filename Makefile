# One-command entry points. `make quickstart` and `make test` set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; pip would otherwise pull a multi-GB CUDA build. Users with a GPU:
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-fast notebooks smoke bench lint clean

setup: $(VENV)/.castlib-installed

$(VENV)/.castlib-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --user --name python3 --display-name "Python 3 (castlib)" >/dev/null
	touch $@

quickstart: setup
	$(PY) -m castlib.quickstart

# unit tests, the real-model tier, the smoke batch (tests/test_notebooks_smoke.py) and nbval on
# the committed notebooks, in one pytest run
test: setup
	$(PY) -m pytest -q tests notebooks --nbval --nbval-sanitize-with nbval_sanitize.cfg $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q tests -m "not real_model" $(PYTEST_ARGS)

smoke: setup
	$(PY) -m castlib.runs papermill_runs/smoke.yaml

bench: setup
	$(PY) -m castlib.bench --json benchmarks/results/bench.json

lint: setup
	$(PY) -m ruff check castlib tests notebooks && $(PY) -m ruff format --check castlib tests notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
