# One-command entry points. `make quickstart` and `make test` set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch: the CPU build where pip finds it (this project's machines); elsewhere pip takes PyPI's
# torch 2.13.0 (CUDA on Linux). For the CPU build everywhere:
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# Either way the version is the lock's (torch==2.13.0 matches 2.13.0+cpu and 2.13.0+cu128).
TORCH_SPEC ?= torch==2.13.0
# the exact versions `make setup` installs (`uv pip compile`; rewrite it with `make lock`)
LOCK ?= requirements.lock.txt
# the extras `make setup` installs (add qwen with EXTRAS=qwen)
SETUP_EXTRAS := all,dev,ray,docs
# the versions the archived runs in papermill_runs/results/ were made with: `make lock` keeps
# them (docs/development.md, "The locked environment"); change them only with a rerun archive
ARCHIVE_PINS := torch==2.13.0 transformers==5.24.0
# e.g. make lock LOCK_ARGS=--upgrade (every package to its newest allowed version) or
#   LOCK_ARGS="--upgrade-package pandas"; without it the lock's other pins are kept
LOCK_ARGS ?=
PYTEST_ARGS ?=
# e.g. make quickstart QUICKSTART_ARGS="--n-test 16 --dev 16"
QUICKSTART_ARGS ?=
# optional dependency groups of pyproject.toml on top of dev, comma-separated, e.g.
#   make setup EXTRAS=qwen    (the second embedded model, Qwen2.5-Coder-1.5B: 22 packages, 1.1 GB)
EXTRAS ?=
comma := ,
EXTRAS_STAMP := $(if $(EXTRAS),$(VENV)/.castlib-extras-$(subst $(comma),-,$(EXTRAS)))

.PHONY: setup lock quickstart test test-fast test-peers notebooks smoke bench lint docs report readme-tables clean

setup: $(VENV)/.castlib-installed $(EXTRAS_STAMP)

$(VENV)/.castlib-installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make setup: $(LOCK) needs Python >= 3.11 (transformers 5.24.0 does), not " + sys.version.split()[0] + "; e.g. make setup PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) $(TORCH_SPEC)
	$(PY) -m pip install -q -c $(LOCK) -e ".[$(SETUP_EXTRAS)$(if $(EXTRAS),$(comma)$(EXTRAS))]"
	# A kernel spec inside .venv only (never the user's Jupyter folders): `jupyter lab` started
	# from .venv offers "Python 3 (castlib)"; papermill batches and nbval use the running
	# interpreter whatever kernels the user has.
	$(PY) -m ipykernel install --sys-prefix --name castlib --display-name "Python 3 (castlib)" >/dev/null
	touch $@

# an existing .venv gets the EXTRAS added (at the lock's versions)
$(VENV)/.castlib-extras-%: $(VENV)/.castlib-installed
	$(PY) -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

# rewrite the lock from pyproject.toml: one resolution for Python >= 3.11 on every platform
# (uv's universal mode: markers where versions differ), every extra included, ARCHIVE_PINS kept
lock:
	@test -x $(PY) || $(MAKE) setup
	$(PY) -m pip install -q -c $(LOCK) uv
	@mkdir -p build && printf '%s\n' $(ARCHIVE_PINS) > build/archive-pins.txt
	@cp $(LOCK) $(LOCK).new 2>/dev/null || true   # uv keeps the pins it finds there
	$(VENV)/bin/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	  --extra all --extra dev --extra ray --extra docs --extra lock --extra qwen \
	  --constraint build/archive-pins.txt \
	  --no-header $(LOCK_ARGS) --output-file $(LOCK).new
	@{ printf '%s\n' "# The exact versions \`make setup\` installs (pip install -c $(LOCK)); written by \`make lock\`" \
	     "# (uv pip compile, universal, Python >= 3.11, every extra; kept: $(ARCHIVE_PINS))."; \
	   cat $(LOCK).new; } > $(LOCK) && rm $(LOCK).new
	@echo "$(LOCK) rewritten; make setup installs it"

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

# the documentation site (site/index.html, offline): the pages in docs/, the API reference from
# the docstrings, the notebooks as committed and the results from the archive in
# papermill_runs/results/ (generated into build/docs/; no model is loaded)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	@echo "site built: open site/index.html"

# the results from the archive are part of the site (results.html); `report` builds the site
report: docs

readme-tables: setup
	$(PY) -m castlib.cli tables --archive papermill_runs/results --readme README.md

# the interop parity tests with the peer libraries (steering-vectors, repeng), which live in
# benchmarks/.venv-bench (their pins predate transformers 5 and numpy 2); elsewhere they skip
test-peers: setup
	bash benchmarks/setup_peers.sh
	benchmarks/.venv-bench/bin/python -m pytest -q tests/test_interop.py $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check castlib tests benchmarks notebooks && $(PY) -m ruff format --check castlib tests benchmarks notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site build/docs
