"""Batch reproduction runs: execute parameterised notebooks over a grid and aggregate results.

Usage::

    castlib run CONFIG.yaml [--dry-run] [--only SUBSTR] [--force] [--kernel NAME]
                            [--executor ray [--address ADDR]]
    castlib run --aggregate-only OUTPUT_DIR

(``python -m castlib.repro.runs ...`` is the same command.) The package is split by what it
does, each part importing only the ones above it in this list:

* `layout` -- the output folder's file names and the JSON helpers every part uses;
* `config` -- the grammar of a run config (YAML): `load_config`, `parse_config`, run ids;
* `preflight` -- what a machine must offer a unit (device, dtype, memory), checked before
  any model loads;
* `execute` -- executing runs with papermill in the current interpreter's kernel
  (`execute_run`, `run_batch`, resuming, forced reruns swapped in);
* `aggregate` -- summary.csv, runs.csv, predictions.jsonl.gz and figures (`aggregate`,
  `load_predictions`, `plot_summary`);
* `ray_executor` -- the same runs as Ray tasks (`run_batch_ray`);
* `cli` -- the command line above both executors.

The names below are re-exported here, so ``from castlib.repro.runs import load_config,
run_batch, aggregate`` keeps working; `ray_executor` and `cli` are not imported by this package
(Ray stays optional).
"""

from __future__ import annotations

from .aggregate import aggregate, load_predictions, plot_summary
from .config import (
    ConfigError,
    Run,
    RunConfig,
    declared_parameters,
    load_config,
    notebook_parameters,
    parse_config,
    runnable_config,
    select_runs,
)
from .execute import (
    MissingResultsError,
    RunOutcome,
    execute_run,
    is_complete,
    run_batch,
    run_record_base,
    source_state,
)
from .layout import (
    FIGURES_DIR,
    PREDICTION_ID_KEYS,
    PREDICTIONS_FILE,
    PREDICTIONS_KEY,
    RESULTS_FILE,
    RUN_FILE,
    RUNS_TABLE_FILE,
    STAGING_DIR,
    STORE_FOLDER,
    SUMMARY_FILE,
    safe_name,
)

__all__ = [
    "FIGURES_DIR",
    "PREDICTIONS_FILE",
    "PREDICTIONS_KEY",
    "PREDICTION_ID_KEYS",
    "RESULTS_FILE",
    "RUNS_TABLE_FILE",
    "RUN_FILE",
    "STAGING_DIR",
    "STORE_FOLDER",
    "SUMMARY_FILE",
    "ConfigError",
    "MissingResultsError",
    "Run",
    "RunConfig",
    "RunOutcome",
    "aggregate",
    "declared_parameters",
    "execute_run",
    "is_complete",
    "load_config",
    "load_predictions",
    "notebook_parameters",
    "parse_config",
    "plot_summary",
    "run_batch",
    "run_record_base",
    "runnable_config",
    "safe_name",
    "select_runs",
    "source_state",
]
