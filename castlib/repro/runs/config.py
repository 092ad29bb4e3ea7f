"""The grammar of a batch config: loading a YAML run config and expanding it into runs.

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
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import itertools
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config_types import check_entry_types, check_output_dir, parameters_cell
from .layout import safe_name

__all__ = [
    "ConfigError",
    "Run",
    "RunConfig",
    "declared_parameters",
    "load_config",
    "notebook_parameters",
    "parse_config",
    "runnable_config",
    "select_runs",
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
MAX_ID_PART = 80
HASH_LEN = 8


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
            top level, overridden per entry); only the Ray executor (`castlib.repro.runs.ray_executor`) uses it.
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
    #: where the batch keeps fits that read no target row (`castlib.methods.fit_store`); None: the
    #: ``fits/`` folder of the batch's activation store
    fit_store: Path | None = None


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
    group = safe_name(name) if name else safe_name(notebook.stem)
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
        try:  # every value against the type of its notebook default
            check_entry_types(notebook, {**defaults, **fixed}, grid, where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
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


def declared_parameters(notebook: str | Path) -> list[str] | None:
    """Names assigned at the top level of a notebook's cell tagged ``parameters``, in the order
    the cell first assigns them.

    Returns None when the notebook has no such cell; raises ValueError when the cell is not plain
    Python (an IPython magic, say) and so cannot be read without a kernel.
    """
    tree = parameters_cell(notebook)
    if tree is None:
        return None
    names: dict[str, None] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            names.update(dict.fromkeys(e.id for e in elements if isinstance(e, ast.Name)))
    return list(names)


def notebook_parameters(notebook: str | Path) -> set[str] | None:
    """The set of `declared_parameters` of ``notebook`` (None without a parameters cell)."""
    names = declared_parameters(notebook)
    return None if names is None else set(names)


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


def _run_hash(notebook_label: str, params: Mapping[str, Any]) -> str:
    payload = json.dumps(
        {"notebook": notebook_label, "parameters": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:HASH_LEN]


def _grid_slug(point: Mapping[str, Any], notebook_label: str, params: Mapping[str, Any]) -> str:
    parts = [f"{key}={safe_name(_format_value(value))}" for key, value in point.items()]
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


def select_runs(runs: Iterable[Run], only: str | Sequence[str] | None) -> list[Run]:
    """The runs whose id contains ``only`` (or any of its substrings); all of them when
    ``only`` is empty."""
    if not only:
        return list(runs)
    needles = [only] if isinstance(only, str) else list(only)
    return [r for r in runs if any(n in r.run_id for n in needles)]


def runnable_config(config: RunConfig | str | Path) -> RunConfig:
    """The config (loaded from its path if needed), refused with `ConfigError` when it is
    superseded: such a config is kept only as the record of its archive."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if cfg.superseded is not None:
        raise ConfigError(
            f"{cfg.source or 'config'} is superseded and kept only as the record of its archive "
            f"({cfg.superseded.strip()}); run the config that replaced it"
        )
    try:  # a folder the runs cannot write is a config error, named before anything runs
        check_output_dir(cfg.output_dir, str(cfg.source or "config"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg
