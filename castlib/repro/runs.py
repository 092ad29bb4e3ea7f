"""Batch reproduction runner: execute parameterised notebooks over a grid and aggregate results.

Usage::

    python -m castlib.repro.runs CONFIG.yaml [--dry-run] [--only SUBSTR] [--force] [--kernel NAME]
                                       [--executor ray [--address ADDR]]
    python -m castlib.repro.runs --aggregate-only OUTPUT_DIR

Run config (YAML)
-----------------
::

    output_dir: runs_out/cross_domain     # required; relative to the current working directory
    kernel: castlib                       # optional (default: the current interpreter); --kernel overrides it
    superseded: "by full.yaml; made by commit abc1234"  # optional: kept as an archive's record only
    fit_store: papermill_runs/fits/full_cpu  # optional; relative to the current working directory
    num_gpus: 1                           # optional (also num_cpus); per run, --executor ray
    defaults:                             # optional; applied to every run
      n_test: 200
    runs:                                 # required, non-empty
      - notebook: notebooks/02_cross_domain.ipynb
        name: xdomain                     # optional; run ids start with it instead of the stem
        num_cpus: 4                       # optional; overrides the top-level value
        parameters: {model: gemma-3-270m} # optional; fixed for every run of this entry
        grid:                             # optional; cartesian product, each value a list
          seed: [0, 1, 2]
          alpha: [4.0, 8.0]

Parameters of a run are ``defaults | parameters | one grid point`` (later wins; a name may not be in
both ``parameters`` and ``grid``). Every name must be assigned in the notebook's cell tagged
``parameters``: papermill would otherwise inject a misspelt name with only a warning and the
notebook would silently run with its default, so the config is rejected (with the closest declared
name as a hint). ``output_dir`` is reserved: the runner passes each run's own
directory under that name. Relative notebook paths are looked up in the current working directory,
then next to the config file.

Run ids and directories
-----------------------
A run's id is ``<name or notebook stem>/<grid point>`` where the grid point is written
``key=value`` joined by ``__`` in the order the grid declares them (``default`` when the entry has
no grid), e.g. ``02_cross_domain/alpha=4.0__seed=0``; characters outside ``[A-Za-z0-9._+-]`` become
``_``. Ids longer than 80 characters are cut and get an 8-hex hash of (notebook, all parameters).
When two runs of different notebooks or parameters would share an id (fixed parameters are not in
the id), each of them gets that hash suffix; runs with identical notebook and parameters are a
configuration error. Give entries a ``name`` to keep ids short and stable. The run directory is
``<output_dir>/<run id>``.

Execution
---------
Each run executes with papermill into ``<run_dir>/<stem>.ipynb`` with ``output_dir=<run_dir>``
(absolute) added to its parameters. The kernel's working directory is the notebook's own folder,
as in Jupyter and nbval, so the same relative paths (e.g. a ``data_dir`` default) work
interactively, under nbval and here; pass absolute paths (or paths relative to the notebook
folder) in parameters. The kernel is ``--kernel``, else the config's ``kernel``, else the
current interpreter (`castlib.repro.kernels.CurrentEnvKernelManager`): a batch runs in the environment
that started it, whatever kernel specs the user has installed.

A notebook writes ``results.json`` (a list of flat records, or one record) into ``output_dir``.
Each run writes ``<run_dir>/run.json`` with its status (``"ok"``/``"failed"``), parameters,
the code that ran it (``source``: git commit of the notebook's checkout, whether its tracked
files differed and which, `source_state`), the library versions that ran it (``versions``,
`castlib.repro.versions.environment_versions`; a kernel outside the batch's interpreter gets a
``versions_note`` instead), timestamps, wall seconds and, on failure, the error type, message, traceback and failing cell. A
run that finishes without a readable ``results.json`` counts as failed. A failed run does not
stop the batch. Rerunning resumes: a run whose run.json says ok with the same parameters and whose
results.json exists is skipped unless ``--force``; failed runs are retried. A forced rerun of a
finished run is written beside it (under ``<output_dir>/.castlib-staging/``, which aggregation
skips) and swapped in only when it succeeds: an interrupted or failed rerun keeps the earlier
result (the rerun's own notebook then names the staging folder as its ``output_dir``).

Every kernel of a (sequential) batch shares one on-disk activation store,
``<output_dir>/.activation_store`` (`castlib.activation_store`), whose ``fits/`` folder keeps the
fits that read no target row (`castlib.fit_store`: I2CL is fitted once per source tasks and
seed). ``fit_store`` moves those fits elsewhere: a folder kept in git lets a long fit, and the
checkpoints it writes while running, carry over to the next machine or session that continues the
batch (the activation store itself is large and stays in the output folder).

``--executor ray [--address ADDR]`` runs each run as a Ray task instead, with the config's
``num_cpus``/``num_gpus`` per run, into the same layout (see castlib.repro.executors); the sequential
executor ignores those two keys.

Exit status: 0 when every selected run is ok (or skipped as done), 1 when any run failed,
2 on a configuration or usage error.

Aggregation
-----------
``aggregate(output_dir)`` reads every ``run.json`` under ``output_dir``; the records of ok runs go
to ``summary.csv`` with ``run_id``, ``notebook`` and one column per run parameter (``param_<name>``
where the name collides with a record column), every run goes to ``runs.csv`` (``run_id``,
``notebook``, ``status``, ``seconds``, ``error``, ``error_cell``, parameters), and seaborn bar plots
of ``accuracy`` (by ``target``/``method``, and by each varying parameter) go to ``figures/`` when
those columns exist. Per-example predictions (the records' ``predictions``) stay out of
summary.csv: they go to ``predictions.jsonl.gz`` (gzip, one JSON line per record with ``run_id``,
``record`` (its index in results.json), `PREDICTION_ID_KEYS` and ``predictions``; written
byte-for-byte reproducibly), which `load_predictions` reads back for `castlib.stats`.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import difflib
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from ..activation_store import STORE_ENV
from ..fit_store import FIT_STORE_ENV
from .kernels import CURRENT_ENV_KERNEL, CurrentEnvKernelManager
from .versions import environment_versions

__all__ = [
    "ConfigError",
    "MissingResultsError",
    "Run",
    "RunConfig",
    "RunOutcome",
    "aggregate",
    "execute_run",
    "is_complete",
    "load_config",
    "runnable_config",
    "load_predictions",
    "notebook_parameters",
    "parse_config",
    "plot_summary",
    "run_batch",
]

RESOURCE_KEYS = ("num_cpus", "num_gpus")
TOP_LEVEL_KEYS = (
    "output_dir",
    "kernel",
    "defaults",
    "runs",
    "superseded",
    "fit_store",
    *RESOURCE_KEYS,
)
ENTRY_KEYS = ("notebook", "name", "parameters", "grid", *RESOURCE_KEYS)
RESERVED_PARAMETERS = frozenset({"output_dir"})
RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
#: Folder under output_dir holding forced reruns until they are swapped in (not aggregated).
STAGING_DIR = ".castlib-staging"
NEW_SUFFIX = ".new"
OLD_SUFFIX = ".old"
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
MAX_ID_PART = 80
HASH_LEN = 8

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ConfigError(ValueError):
    """An invalid run config; the message names the offending key."""


@dataclass(frozen=True)
class Run:
    """One notebook execution: what to run, with which parameters, under which id.

    Attributes:
        notebook: absolute path of the input notebook.
        parameters: all parameters passed to papermill (without ``output_dir``); treat read-only.
        run_id: relative POSIX path identifying the run, also its directory under ``output_dir``.
        grid: the grid point of this run (a subset of ``parameters``), used for its id.
        notebook_label: the notebook path as written in the config (used in tables and hashes).
        resources: what one run asks of a cluster (``num_cpus``, ``num_gpus``; the config's
            top level, overridden per entry); only the Ray executor (castlib.repro.executors) uses it.
    """

    notebook: Path
    parameters: dict[str, Any]
    run_id: str
    grid: dict[str, Any] = field(default_factory=dict)
    notebook_label: str = ""
    resources: dict[str, float] = field(default_factory=dict)

    def run_dir(self, output_dir: str | Path) -> Path:
        """Directory holding this run's outputs."""
        return Path(output_dir) / self.run_id


@dataclass(frozen=True)
class RunConfig:
    """A parsed run config: absolute output directory and the expanded runs."""

    output_dir: Path
    runs: list[Run]
    kernel: str | None = None
    source: Path | None = None
    #: set for a config kept only as the record of an archived batch (its text says what
    #: replaced it and which commit ran it): its parameters are not checked against today's
    #: notebooks, and `run_batch` refuses to run it
    superseded: str | None = None
    #: where the batch keeps fits that read no target row (`castlib.fit_store`); None: the
    #: ``fits/`` folder of the batch's activation store
    fit_store: Path | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run in a batch."""

    run: Run
    status: Literal["ok", "failed", "skipped"]
    seconds: float = 0.0
    error: str | None = None


# --------------------------------------------------------------------------- config parsing


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config (see the module docstring for the schema)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    return parse_config(data, base_dir=path.resolve().parent, source=path)


def parse_config(
    data: Any, *, base_dir: str | Path | None = None, source: str | Path | None = None
) -> RunConfig:
    """Validate a config mapping and expand it into runs.

    Args:
        data: the loaded YAML document.
        base_dir: second place to look for relative notebook paths (the config file's folder).
        source: shown in error messages.
    """
    where = str(source) if source is not None else "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {_kind(data)}")
    _check_keys(data, TOP_LEVEL_KEYS, where)
    if "output_dir" not in data or data["output_dir"] in (None, ""):
        raise ConfigError(f"{where}: missing required key 'output_dir'")
    output_dir = Path(str(data["output_dir"])).expanduser().resolve()
    kernel = data.get("kernel")
    if kernel is not None and not isinstance(kernel, str):
        raise ConfigError(f"{where}: 'kernel' must be a string, got {_kind(kernel)}")
    superseded = data.get("superseded")
    if superseded is not None and (not isinstance(superseded, str) or not superseded.strip()):
        raise ConfigError(
            f"{where}: 'superseded' must be a non-empty string, got {_kind(superseded)}"
        )
    fit_store = data.get("fit_store")
    if fit_store is not None and (not isinstance(fit_store, str) or not fit_store.strip()):
        raise ConfigError(f"{where}: 'fit_store' must be a folder path, got {_kind(fit_store)}")
    defaults = _parameter_mapping(data.get("defaults"), f"{where}: defaults")
    resources = _resources(data, where)
    entries = data.get("runs")
    if entries is None or (isinstance(entries, list) and not entries):
        raise ConfigError(f"{where}: 'runs' must list at least one run")
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'runs' must be a list, got {_kind(entries)}")
    base = Path(base_dir) if base_dir is not None else None
    runs: list[Run] = []
    for i, entry in enumerate(entries):
        runs.extend(
            _expand_entry(
                entry, defaults, base, f"{where}: runs[{i}]", resources, superseded is None
            )
        )
    return RunConfig(
        output_dir=output_dir,
        runs=_disambiguate(runs, where),
        kernel=kernel,
        source=Path(source) if source is not None else None,
        superseded=superseded,
        fit_store=Path(fit_store).expanduser().resolve() if fit_store else None,
    )


def _expand_entry(
    entry: Any,
    defaults: dict[str, Any],
    base_dir: Path | None,
    where: str,
    resources: dict[str, float] | None = None,
    check_declared: bool = True,
) -> list[Run]:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'notebook', got {_kind(entry)}")
    _check_keys(entry, ENTRY_KEYS, where)
    label = entry.get("notebook")
    if not isinstance(label, str) or not label:
        raise ConfigError(f"{where}: missing 'notebook' (path to an .ipynb file)")
    notebook = _find_notebook(label, base_dir, where)
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name: must be a string, got {_kind(name)}")
    group = _safe(name) if name else _safe(notebook.stem)
    if not group:
        raise ConfigError(f"{where}.name: {name!r} has no filesystem-safe characters")
    fixed = _parameter_mapping(entry.get("parameters"), f"{where}.parameters")
    resources = {**(resources or {}), **_resources(entry, where)}
    grid = _grid_mapping(entry.get("grid"), f"{where}.grid")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise ConfigError(f"{where}: {both} given both in 'parameters' and 'grid'")

    if check_declared:
        _check_declared(notebook, [*defaults, *fixed, *grid], where)
    label = Path(label).as_posix()
    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        params = {**defaults, **fixed, **point}
        run_id = f"{group}/{_grid_slug(point, label, params)}"
        runs.append(Run(notebook, params, run_id, point, label, dict(resources)))
    return runs


def _find_notebook(label: str, base_dir: Path | None, where: str) -> Path:
    path = Path(label).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute() and base_dir is not None:
        candidates.append(base_dir / path)
    if path.suffix != ".ipynb":
        raise ConfigError(f"{where}.notebook: {label!r} is not an .ipynb file")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"{where}.notebook: notebook not found: {label!r} (looked at {looked})")


def notebook_parameters(notebook: str | Path) -> set[str] | None:
    """Names assigned at the top level of a notebook's cell tagged ``parameters``.

    Returns None when the notebook has no such cell; raises ValueError when the cell is not plain
    Python (an IPython magic, say) and so cannot be read without a kernel.
    """
    import nbformat

    nb = nbformat.read(Path(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return None
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ValueError(f"the parameters cell of {notebook} is not plain Python: {exc}") from exc
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            names.update(e.id for e in elements if isinstance(e, ast.Name))
    return names


def _check_declared(notebook: Path, names: Sequence[str], where: str) -> None:
    if not names:
        return
    try:
        declared = notebook_parameters(notebook)
    except ValueError as exc:
        warnings.warn(f"{where}: {exc}; parameter names not checked", stacklevel=3)
        return
    if declared is None:
        raise ConfigError(
            f"{where}: {notebook.name} has no cell tagged 'parameters', so papermill would "
            f"inject {sorted(set(names))} above its first cell; tag its parameters cell"
        )
    for name in dict.fromkeys(names):
        if name not in declared:
            hint = difflib.get_close_matches(name, sorted(declared), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}: {name!r} is not a parameter of {notebook.name}{extra}; "
                f"its parameters cell declares: {', '.join(sorted(declared))}"
            )


def _parameter_mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameter: value, got {_kind(value)}")
    for key in value:
        _check_parameter_name(key, where)
    return dict(value)


def _resources(mapping: Mapping[str, Any], where: str) -> dict[str, float]:
    """The ``num_cpus``/``num_gpus`` a run asks for: non-negative numbers."""
    out: dict[str, float] = {}
    for key in RESOURCE_KEYS:
        if key not in mapping:
            continue
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: {key!r} must be a non-negative number, got {_kind(value)}")
        out[key] = value
    return out


def _grid_mapping(value: Any, where: str) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of parameter: [values], got {_kind(value)}")
    grid: dict[str, list[Any]] = {}
    for key, values in value.items():
        _check_parameter_name(key, where)
        if not isinstance(values, list):
            raise ConfigError(
                f"{where}.{key}: grid values must be a list (e.g. [{values!r}]), got {_kind(values)}"
            )
        if not values:
            raise ConfigError(f"{where}.{key}: grid values must not be empty")
        grid[key] = values
    return grid


def _check_parameter_name(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise ConfigError(f"{where}: parameter name {key!r} is not a Python identifier")
    if key in RESERVED_PARAMETERS:
        raise ConfigError(f"{where}: {key!r} is set by the runner to each run's directory")


def _check_keys(mapping: Mapping[Any, Any], allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{extra}; allowed keys: {', '.join(allowed)}"
            )


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------- run ids


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _safe(text: str) -> str:
    """Filesystem-safe form of ``text``: unsafe runs become ``_``; no leading dots."""
    return _UNSAFE.sub("_", text).strip("_").lstrip(".")


def _run_hash(notebook_label: str, params: Mapping[str, Any]) -> str:
    payload = json.dumps(
        {"notebook": notebook_label, "parameters": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:HASH_LEN]


def _grid_slug(point: Mapping[str, Any], notebook_label: str, params: Mapping[str, Any]) -> str:
    parts = [f"{key}={_safe(_format_value(value))}" for key, value in point.items()]
    slug = "__".join(parts) or "default"
    if len(slug) > MAX_ID_PART:
        keep = MAX_ID_PART - HASH_LEN - 2
        slug = f"{slug[:keep].rstrip('_.-=')}__{_run_hash(notebook_label, params)}"
    return slug


def _disambiguate(runs: list[Run], where: str) -> list[Run]:
    """Make run ids unique; identical (notebook, parameters) twice is an error."""
    by_id: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        by_id.setdefault(run.run_id, []).append(i)
    out = list(runs)
    for run_id, indices in by_id.items():
        if len(indices) == 1:
            continue
        seen: dict[str, int] = {}
        for i in indices:
            key = _run_hash(runs[i].notebook_label, runs[i].parameters)
            if key in seen:
                raise ConfigError(
                    f"{where}: duplicate run id {run_id!r}: runs #{seen[key]} and #{i} have the "
                    "same notebook and parameters (repeated grid value or entry?)"
                )
            seen[key] = i
            run = runs[i]
            out[i] = replace(run, run_id=f"{run_id}__{key}")
    final = [r.run_id for r in out]
    if len(set(final)) != len(final):  # pragma: no cover - needs a hash collision
        raise ConfigError(f"{where}: duplicate run ids after disambiguation; set entry names")
    return out


# --------------------------------------------------------------------------- execution


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def is_complete(run: Run, output_dir: str | Path) -> bool:
    """True when the run's run.json says ok with the same parameters and results.json exists."""
    return _complete_in(run, run.run_dir(output_dir))


def _complete_in(run: Run, run_dir: Path) -> bool:
    try:
        record = _read_json(run_dir / RUN_FILE)
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("status") == "ok"
        and record.get("parameters") == _jsonable(run.parameters)
        and (run_dir / RESULTS_FILE).is_file()
    )


def _kernel_and_language(notebook: Path, kernel: str | None) -> tuple[str, str | None]:
    """Kernel to use (an explicit name, else `castlib.repro.kernels.CURRENT_ENV_KERNEL`: the running
    interpreter) and the language papermill needs when the notebook's metadata names none
    (``None`` when it does)."""
    import nbformat

    try:
        metadata = nbformat.read(notebook, as_version=4).metadata
    except Exception:  # noqa: BLE001 - an unreadable notebook fails later with papermill's message
        metadata = {}
    spec = metadata.get("kernelspec") or {}
    known = spec.get("language") or (metadata.get("language_info") or {}).get("name")
    return kernel or CURRENT_ENV_KERNEL, None if known else "python"


class MissingResultsError(RuntimeError):
    """A notebook ran to the end but left no usable results.json."""


def _check_results(path: Path) -> None:
    if not path.is_file():
        raise MissingResultsError(
            f"the notebook finished without writing {RESULTS_FILE} into output_dir ({path.parent})"
        )
    try:
        _records(_read_json(path), path)
    except ValueError as exc:
        raise MissingResultsError(f"unreadable {RESULTS_FILE}: {exc}") from exc


def _error_record(exc: BaseException) -> dict[str, Any]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return {
            "type": str(exc.ename),
            "message": str(exc.evalue),
            "exception": type(exc).__name__,
            "cell": {
                "index": exc.cell_index,
                "execution_count": exc.exec_count,
                "source": exc.source,
            },
            "traceback": _ANSI.sub("", "\n".join(exc.traceback))[-8000:],
        }
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "exception": type(exc).__name__,
        "cell": None,
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


def source_state(folder: str | Path, max_changed: int = 20) -> dict[str, Any] | None:
    """The git commit of the checkout holding ``folder``, whether its tracked files differ from
    it, and which (``{"commit": sha, "dirty": bool, "changed": [paths]}``, at most
    ``max_changed`` paths, relative to the repository root; e.g. only an archive that
    ``archive.sh`` just wrote), or None outside git (or without git), so that a record says
    which code made it."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("-c", "core.quotepath=off", "status", "--porcelain", "--untracked-files=no")
    if status is None:
        return {"commit": commit.strip(), "dirty": None, "changed": []}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:max_changed]}


def run_record_base(run: Run) -> dict[str, Any]:
    """The fields every ``run.json`` starts with (status ``failed`` until the run succeeds)."""
    return {
        "run_id": run.run_id,
        "notebook": run.notebook_label or str(run.notebook),
        "notebook_path": str(run.notebook),
        "status": "failed",
        "parameters": _jsonable(run.parameters),
        "grid": _jsonable(run.grid),
    }


def execute_run(
    run: Run,
    output_dir: str | Path,
    *,
    kernel_name: str | None = None,
    force: bool = False,
) -> RunOutcome:
    """Execute one run with papermill (unless already complete) and write its run.json.

    Exceptions from the notebook or the kernel are recorded, not raised; KeyboardInterrupt is.
    """
    import papermill

    _recover_swap(run, output_dir)
    if not force and is_complete(run, output_dir):
        return RunOutcome(run, "skipped")
    final_dir = run.run_dir(output_dir).resolve()
    # a forced rerun of a finished run is written beside it and swapped in when it succeeds,
    # so an interrupted or failed rerun keeps the earlier result
    swap = force and is_complete(run, output_dir)
    run_dir = _staging_dir(run, output_dir) if swap else final_dir
    if swap and run_dir.exists():
        shutil.rmtree(run_dir)  # left by an earlier interrupted rerun
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RUN_FILE, RESULTS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    kernel, language = _kernel_and_language(run.notebook, kernel_name)
    output_notebook = run_dir / f"{run.notebook.stem}.ipynb"
    record: dict[str, Any] = {
        **run_record_base(run),
        "kernel": kernel,
        "cwd": str(run.notebook.parent),
        "output_notebook": output_notebook.name,
        "papermill_version": papermill.__version__,
        "source": source_state(run.notebook.parent),
        "started": _now(),
    }
    error: dict[str, Any] | None = None
    engine_kwargs: dict[str, Any] = {}
    if kernel == CURRENT_ENV_KERNEL:
        engine_kwargs["kernel_manager_class"] = CurrentEnvKernelManager
        record["python"] = sys.executable
        record["versions"] = environment_versions()  # the kernel runs in this interpreter
    else:
        record["versions_note"] = f"kernel {kernel!r} runs in its own environment, not recorded"
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(run.notebook),
            str(output_notebook),
            parameters={**run.parameters, "output_dir": str(run_dir)},
            cwd=str(run.notebook.parent),
            kernel_name=kernel,
            language=language,
            progress_bar=False,
            **engine_kwargs,
        )
        _check_results(run_dir / RESULTS_FILE)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the batch goes on
        error = _error_record(exc)
    seconds = time.perf_counter() - t0
    record.update(
        status="ok" if error is None else "failed",
        finished=_now(),
        seconds=round(seconds, 3),
        error=error,
    )
    _write_json(run_dir / RUN_FILE, record)
    message = None if error is None else f"{error['type']}: {error['message']}"
    if swap:
        if error is None:
            _swap_in(run_dir, final_dir, _staging_dir(run, output_dir, OLD_SUFFIX))
        else:
            message = f"{message} (the earlier result in {final_dir} is kept; this attempt is in {run_dir})"
    return RunOutcome(run, record["status"], seconds, message)


def _staging_dir(run: Run, output_dir: str | Path, suffix: str = NEW_SUFFIX) -> Path:
    """Where a forced rerun of ``run`` is written (``suffix`` NEW_SUFFIX) or the run it replaces
    waits while the two are swapped (OLD_SUFFIX): under ``<output_dir>/.castlib-staging/``,
    which `aggregate` skips."""
    return (Path(output_dir) / STAGING_DIR / (run.run_id + suffix)).resolve()


def _swap_in(new: Path, final: Path, old: Path) -> None:
    """Replace ``final`` by ``new``: ``final`` -> ``old``, ``new`` -> ``final``, drop ``old``.
    An interruption between the two renames is repaired by `_recover_swap`."""
    if old.exists():
        shutil.rmtree(old)
    old.parent.mkdir(parents=True, exist_ok=True)
    final.rename(old)
    new.rename(final)
    shutil.rmtree(old)


def _recover_swap(run: Run, output_dir: str | Path) -> None:
    """Finish or undo a swap cut between its renames: the run's folder is missing but its
    previous version waits in the staging area."""
    final = run.run_dir(output_dir).resolve()
    old = _staging_dir(run, output_dir, OLD_SUFFIX)
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old)
        return
    new = _staging_dir(run, output_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    if _complete_in(run, new):
        new.rename(final)  # the rerun had finished: complete the swap
        shutil.rmtree(old)
    else:
        old.rename(final)


def _select(runs: Iterable[Run], only: str | Sequence[str] | None) -> list[Run]:
    if not only:
        return list(runs)
    needles = [only] if isinstance(only, str) else list(only)
    return [r for r in runs if any(n in r.run_id for n in needles)]


#: The activation store every notebook of a batch shares (`castlib.activation_store`).
STORE_FOLDER = ".activation_store"


@contextlib.contextmanager
def _store_for_kernels(folder: Path, fit_store: Path | None = None) -> Iterator[None]:
    """Point the kernels started inside at one on-disk activation store, and at ``fit_store``
    when given (each unless the user set the variable already: ``$CASTLIB_ACTIVATION_STORE``,
    ``$CASTLIB_FIT_STORE``); the variables are restored on exit."""
    wanted = {STORE_ENV: folder}
    if fit_store is not None:
        wanted[FIT_STORE_ENV] = fit_store
    ours = [name for name in wanted if os.environ.get(name) is None]
    for name in ours:
        os.environ[name] = str(wanted[name].resolve())
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def runnable_config(config: RunConfig | str | Path) -> RunConfig:
    """The config (loaded from its path if needed), refused with `ConfigError` when it is
    superseded: such a config is kept only as the record of its archive."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if cfg.superseded is not None:
        raise ConfigError(
            f"{cfg.source or 'config'} is superseded and kept only as the record of its archive "
            f"({cfg.superseded.strip()}); run the config that replaced it"
        )
    return cfg


def run_batch(
    config: RunConfig | str | Path,
    *,
    only: str | Sequence[str] | None = None,
    force: bool = False,
    kernel_name: str | None = None,
    progress: bool = True,
) -> list[RunOutcome]:
    """Execute the config's runs in order (resuming), with a tqdm bar; returns one outcome each.

    Args:
        config: a RunConfig or the path of a YAML config.
        only: keep runs whose id contains this substring (or any of these substrings).
        force: rerun runs that are already complete.
        kernel_name: overrides the config's and the notebooks' kernel.
        progress: show the progress bar and one line per run.
    """
    from tqdm.auto import tqdm

    cfg = runnable_config(config)
    kernel = kernel_name or cfg.kernel
    runs = _select(cfg.runs, only)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with (
        _store_for_kernels(cfg.output_dir / STORE_FOLDER, cfg.fit_store),
        tqdm(runs, desc="runs", unit="run", disable=not progress) as bar,
    ):
        for run in bar:
            bar.set_postfix_str(run.run_id, refresh=True)
            outcome = execute_run(run, cfg.output_dir, kernel_name=kernel, force=force)
            outcomes.append(outcome)
            if progress:
                if outcome.status == "failed":
                    tqdm.write(f"[FAILED] {run.run_id}: {outcome.error}", file=sys.stderr)
                elif outcome.status == "ok":
                    tqdm.write(f"[ok] {run.run_id} ({outcome.seconds:.1f}s)", file=sys.stderr)
    return outcomes


# --------------------------------------------------------------------------- aggregation


def _records(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of records (JSON objects)")
    return data


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _param_columns(params: Mapping[str, Any], taken: set[str]) -> dict[str, Any]:
    return {(f"param_{k}" if k in taken else k): _cell(v) for k, v in params.items()}


def aggregate(output_dir: str | Path, *, figures: bool = True) -> pd.DataFrame:
    """Collect every run under ``output_dir`` into summary.csv, runs.csv and figures/.

    Returns the summary table: one row per results.json record of each ok run, with ``run_id``,
    ``notebook`` and the run parameters (``param_<name>`` when a record has the same column).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output directory not found: {output_dir}")
    runs: list[dict[str, Any]] = []
    for path in sorted(output_dir.rglob(RUN_FILE)):
        if STAGING_DIR in path.relative_to(output_dir).parts:
            continue  # a forced rerun in progress or interrupted (see execute_run)
        try:
            record = _read_json(path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable {path}: {exc}", stacklevel=2)
            continue
        if isinstance(record, dict):
            record.setdefault("run_id", path.parent.relative_to(output_dir).as_posix())
            runs.append({**record, "_dir": path.parent})
    if not runs:
        warnings.warn(f"no {RUN_FILE} found under {output_dir}", stacklevel=2)

    results: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for run in runs:
        if run.get("status") != "ok":
            continue
        path = run["_dir"] / RESULTS_FILE
        try:
            results.append((run, _records(_read_json(path), path)))
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping results of {run['run_id']}: {exc}", stacklevel=2)

    record_columns = {key for _, records in results for rec in records for key in rec}
    taken = record_columns | {"run_id", "notebook"}
    taken.discard(PREDICTIONS_KEY)
    rows = []
    predictions = []
    param_columns: dict[str, None] = {}
    for run, records in results:
        ident = {"run_id": run["run_id"], "notebook": run.get("notebook")}
        params = _param_columns(run.get("parameters") or {}, taken)
        param_columns.update(dict.fromkeys(params))
        for index, rec in enumerate(records):
            rows.append(
                {**ident, **params, **{k: v for k, v in rec.items() if k != PREDICTIONS_KEY}}
            )
            if rec.get(PREDICTIONS_KEY) is not None:
                predictions.append(_prediction_line(run["run_id"], index, rec))
    summary = pd.DataFrame(rows, columns=None if rows else ["run_id", "notebook"])

    table_columns = {"run_id", "notebook", "status", "seconds", "error", "error_cell"}
    table = pd.DataFrame(
        [
            {
                "run_id": run["run_id"],
                "notebook": run.get("notebook"),
                "status": run.get("status"),
                "seconds": run.get("seconds"),
                "error": _error_text(run.get("error")),
                "error_cell": ((run.get("error") or {}).get("cell") or {}).get("index"),
                **_param_columns(run.get("parameters") or {}, table_columns),
            }
            for run in runs
        ],
        columns=None if runs else sorted(table_columns),
    )
    table["error_cell"] = table["error_cell"].astype("Int64")
    summary.to_csv(output_dir / SUMMARY_FILE, index=False)
    table.to_csv(output_dir / RUNS_TABLE_FILE, index=False)
    _write_predictions(output_dir / PREDICTIONS_FILE, predictions)
    if figures:
        plot_summary(summary, output_dir / FIGURES_DIR, parameters=list(param_columns))
    return summary


def _prediction_line(run_id: str, index: int, rec: Mapping[str, Any]) -> dict[str, Any]:
    preds = rec[PREDICTIONS_KEY]
    if isinstance(preds, str):  # flat records (nbtools.flat_record) hold it as JSON text
        preds = json.loads(preds)
    ident = {k: rec[k] for k in PREDICTION_ID_KEYS if k in rec}
    return {"run_id": run_id, "record": index, **ident, PREDICTIONS_KEY: preds}


def _write_predictions(path: Path, lines: list[dict[str, Any]]) -> None:
    """Write the prediction lines (gzip with mtime 0: the same records give the same bytes);
    remove a stale file when there are none."""
    if not lines:
        path.unlink(missing_ok=True)
        return
    text = "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text.encode("utf-8"))
    tmp.replace(path)


def load_predictions(output_dir: str | Path) -> list[dict[str, Any]]:
    """The per-example prediction lines of an aggregated batch (``predictions.jsonl.gz``):
    one dict per record with ``run_id``, ``record``, `PREDICTION_ID_KEYS` and
    ``predictions``, ready for `castlib.stats.target_table`."""
    path = Path(output_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: aggregate the batch first (python -m castlib.repro.runs "
            f"--aggregate-only {output_dir}); records written before castlib kept per-example "
            "predictions have none"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error)


def plot_summary(
    summary: pd.DataFrame,
    figures_dir: str | Path,
    *,
    parameters: Iterable[str] = (),
    metric: str = "accuracy",
) -> list[Path]:
    """Draw seaborn bar plots of ``metric`` when the columns allow; returns the files written.

    One set of figures per notebook (a batch's notebooks measure different things, so their rows
    are never pooled; file names start with the notebook's stem when the summary holds more than
    one): ``metric`` by ``target`` (hue ``method``) or by ``method``, and by each column named in
    ``parameters`` that takes 2-20 distinct values and is not determined by ``target`` or
    ``method`` (a grid column that only groups methods or targets into runs shows nothing those
    plots do not). Bars are means, error bars the standard deviation over rows; the legend sits
    beside the axes. Draws nothing when ``metric`` is missing or not numeric. Uses matplotlib's
    Agg canvas through ``Figure`` without touching pyplot state.
    """
    if metric not in summary or not pd.api.types.is_numeric_dtype(summary[metric]):
        return []
    data = summary.dropna(subset=[metric])
    if data.empty:
        return []
    figures_dir = Path(figures_dir)
    notebooks = sorted(data["notebook"].dropna().astype(str).unique()) if "notebook" in data else []
    if len(notebooks) <= 1:
        return _plot_notebook(data, figures_dir, "", parameters, metric)
    written = []
    for notebook in notebooks:
        part = data[data["notebook"].astype(str) == notebook]
        prefix = _safe(Path(notebook).stem) + "_"
        written += _plot_notebook(part, figures_dir, prefix, parameters, metric)
    return written


def _determined_by(data: pd.DataFrame, col: str, by: str) -> bool:
    """Whether every value of ``by`` comes with one value of ``col`` in ``data``."""
    if by not in data:
        return False
    pairs = data[[by, col]].astype(str)
    return bool((pairs.groupby(by)[col].nunique() <= 1).all())


def _plot_notebook(
    data: pd.DataFrame, figures_dir: Path, prefix: str, parameters: Iterable[str], metric: str
) -> list[Path]:
    hue = "method" if "method" in data else None
    plots: list[tuple[str, str, str | None]] = []
    if "target" in data:
        plots.append((f"{metric}_by_target" + ("_method" if hue else ""), "target", hue))
    elif hue:
        plots.append((f"{metric}_by_method", "method", None))
    for col in parameters:
        if (
            col in data
            and col not in {"method", "target"}
            and 2 <= data[col].nunique() <= 20
            and not any(_determined_by(data, col, by) for by in ("method", "target"))
        ):
            plots.append((f"{metric}_by_{_safe(col)}", col, hue))
    written = []
    for name, x, plot_hue in plots[:12]:
        try:
            path = figures_dir / f"{prefix}{name}.png"
            written.append(_barplot(data, x, metric, plot_hue, path))
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the tables
            warnings.warn(f"could not draw {prefix}{name}: {exc}", stacklevel=2)
    return written


def _barplot(data: pd.DataFrame, x: str, y: str, hue: str | None, path: Path) -> Path:
    import seaborn as sns
    from matplotlib.figure import Figure

    n_x = data[x].nunique()
    n_hue = data[hue].nunique() if hue else 1
    legend = 2.6 if hue else 0.0
    fig = Figure(figsize=(min(30.0, max(4.0, 0.14 * n_x * n_hue + 0.5 * n_x) + legend), 4.2))
    ax = fig.add_subplot()
    order = sorted(data[x].dropna().unique(), key=_sort_key)
    sns.barplot(data=data, x=x, y=y, hue=hue, order=order, errorbar="sd", ax=ax)
    ax.set_title(f"{y} by {x}" + (f" and {hue}" if hue else "") + " (mean, sd over rows)")
    if hue and ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if n_x > 6 or max((len(str(v)) for v in order), default=0) > 14:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


if (
    __name__ == "__main__"
):  # python -m castlib.repro.runs: the command line lives in castlib.repro.runs_cli
    from castlib.repro.runs_cli import main

    raise SystemExit(main())
