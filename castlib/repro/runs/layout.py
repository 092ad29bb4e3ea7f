"""The on-disk layout of a batch's output folder, shared by the executors and the aggregation.

::

    <output_dir>/
        <run id>/run.json            what ran, how it ended (`RUN_FILE`)
        <run id>/results.json        the notebook's records (`RESULTS_FILE`)
        <run id>/<stem>.ipynb        the executed notebook
        .castlib-staging/            forced reruns until they are swapped in (`STAGING_DIR`)
        .activation_store/           the activation store every kernel shares (`STORE_FOLDER`)
        summary.csv, runs.csv, predictions.jsonl.gz, figures/   written by the aggregation

Also the JSON helpers every part uses (atomic writes, a record list's validation) and
`safe_name`, the filesystem-safe form of a run id part or a figure name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = [
    "FIGURES_DIR",
    "NEW_SUFFIX",
    "OLD_SUFFIX",
    "PREDICTIONS_FILE",
    "PREDICTIONS_KEY",
    "PREDICTION_ID_KEYS",
    "RESULTS_FILE",
    "RUNS_TABLE_FILE",
    "RUN_FILE",
    "STAGING_DIR",
    "STORE_FOLDER",
    "SUMMARY_FILE",
    "jsonable",
    "read_json",
    "result_records",
    "safe_name",
    "write_json",
]

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
#: Folder under output_dir holding forced reruns until they are swapped in (not aggregated).
STAGING_DIR = ".castlib-staging"
NEW_SUFFIX = ".new"
OLD_SUFFIX = ".old"
#: The activation store every notebook of a batch shares (`castlib.activation_store`).
STORE_FOLDER = ".activation_store"
SUMMARY_FILE = "summary.csv"
RUNS_TABLE_FILE = "runs.csv"
FIGURES_DIR = "figures"
PREDICTIONS_FILE = "predictions.jsonl.gz"
#: Record key of the per-example predictions (kept out of summary.csv).
PREDICTIONS_KEY = "predictions"
#: Record fields repeated on each line of predictions.jsonl.gz to identify its record.
PREDICTION_ID_KEYS = (
    "model",
    "method",
    "registry_method",
    "target",
    "sources",
    "seed",
    "split",
    "prompt_format",
    "uses_target_labels",
    "n",
    "accuracy",
)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str) -> str:
    """Filesystem-safe form of ``text``: each run of characters outside ``[A-Za-z0-9._+-]``
    becomes ``_``; no leading or trailing ``_``, no leading dots."""
    return _UNSAFE.sub("_", text).strip("_").lstrip(".")


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (non-JSON leaves become strings)."""
    return json.loads(json.dumps(value, default=str))


def read_json(path: Path) -> Any:
    """The JSON document in ``path``."""
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def result_records(data: Any, path: Path) -> list[dict[str, Any]]:
    """The records of a results.json document: a list of JSON objects (one object counts as a
    list of one); raises ValueError naming ``path`` otherwise."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of records (JSON objects)")
    return data
