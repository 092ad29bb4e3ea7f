"""Typed run configs: every parameter checked against its notebook default before anything runs.

A notebook's cell tagged ``parameters`` assigns each parameter a default (``n_test = 16``,
``alpha = 0.5``, ``methods = ["zero_shot", ...]``). A run config's value for that parameter must
have the default's type, or papermill would hand the kernel something the notebook never
expected and the run would fail (or, worse, run) far from the config line that caused it:

    default            accepted values
    bool               True / False
    int                an int (not a bool: YAML 1.1 reads ``yes``/``no``/``on``/``off`` as bools)
    float              an int or a float (not a bool)
    str                a string
    list / tuple       a list (its items checked against the default's items when those share
                       one scalar type), or a string (a keyword such as ``"all"`` or ``"auto"``)
    dict               a mapping
    None, or not a literal
                       anything (the default says nothing about the type)

A list parameter that names what a run iterates over (``seeds``, ``targets``, ``sources``,
``tasks``, ``pairs``, ``methods``) must not be empty, and seeds must be distinct non-negative
ints. ``null`` (None) is accepted for every parameter (the notebooks document ``None`` as "all" or
"the method's default"). YAML 1.1 traps are named in the error: ``1e-3`` (no dot) is read as the
string ``"1e-3"``, ``yes`` as True. `check_output_dir` refuses an output folder that cannot be
written (read-only, or below a regular file), naming the path.

Errors are `ValueError`; `castlib.repro.runs` turns them into its ``ConfigError`` (exit 2).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "notebook_defaults",
    "check_parameter_types",
    "check_entry_types",
    "check_output_dir",
]

#: A default that is not a Python literal: its type is not checked.
UNKNOWN = object()

_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_YAML_BOOLS = "YAML 1.1 reads yes/no/on/off/true/false as booleans"


def parameters_cell(notebook: str | Path) -> ast.Module | None:
    """The parsed source of the notebook's cell tagged ``parameters`` (None when there is no
    such cell); ValueError when the cell is not plain Python (an IPython magic, say) and so
    cannot be read without a kernel."""
    import nbformat

    nb = nbformat.read(Path(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return None
    try:
        return ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ValueError(f"the parameters cell of {notebook} is not plain Python: {exc}") from exc


def notebook_defaults(notebook: str | Path) -> dict[str, Any] | None:
    """``{name: default}`` of the top-level assignments in the notebook's cell tagged
    ``parameters`` (`UNKNOWN` where the value is not a literal); None when there is no such
    cell. Raises ValueError when the cell is not plain Python."""
    tree = parameters_cell(notebook)
    if tree is None:
        return None
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.value is not None:
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError):
            default = UNKNOWN
        for target in targets:
            if isinstance(target, ast.Name):
                out[target.id] = default
            elif isinstance(target, (ast.Tuple, ast.List)):  # a, b = 1.0, False
                items = default if isinstance(default, tuple) else ()
                for i, element in enumerate(target.elts):
                    if isinstance(element, ast.Name):
                        same = len(items) == len(target.elts)
                        out[element.id] = items[i] if same else UNKNOWN
    return out


def _yaml_float(text: str) -> str:
    """``text`` spelled so that YAML 1.1 reads a float (``1e-3`` -> ``1.0e-3``)."""
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    return mantissa + (f"e{exponent}" if exponent else "")


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _scalar_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` does not fit the type of the scalar ``default`` (None: it fits)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return None
        return "must be true or false"
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        if isinstance(value, bool):
            return f"must be an int ({_YAML_BOOLS}; write a number)"
        return "must be an int"
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return (
                f"must be a number; YAML 1.1 reads an exponent without a dot and a sign as "
                f"text: write {_yaml_float(value.strip())}"
            )
        if isinstance(value, bool):
            return f"must be a number ({_YAML_BOOLS})"
        return "must be a number"
    if isinstance(default, str):
        if isinstance(value, str):
            return None
        if isinstance(value, bool):
            return f"must be a string ({_YAML_BOOLS}; quote it: '{value}')"
        return "must be a string (quote it)"
    return None


def _problem(value: Any, default: Any) -> str | None:
    if value is None or default is None or default is UNKNOWN:
        return None
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            return None  # a keyword ("all", "auto"): the notebook checks which
        if not isinstance(value, (list, tuple)):
            return "must be a list (or a keyword string)"
        kinds = {type(d) for d in default if d is not None}
        if len(kinds) == 1 and not issubclass(next(iter(kinds)), (list, tuple, dict)):
            sample = next(d for d in default if d is not None)
            for i, item in enumerate(value):
                why = _scalar_problem(item, sample) if item is not None else None
                if why is not None:
                    return f"item [{i}] = {_kind(item)} {why}"
        return None
    if isinstance(default, dict):
        return None if isinstance(value, Mapping) else "must be a mapping"
    return _scalar_problem(value, default)


#: List parameters that name what a run iterates over: an empty list would run nothing (a run
#: with no seed, no target, no task) and write an empty record, so it is refused.
NON_EMPTY = ("seeds", "targets", "sources", "tasks", "pairs", "methods")


def _value_problem(name: str, value: Any) -> str | None:
    """Value checks beyond the type: a `NON_EMPTY` list that is empty or repeats an item."""
    if name not in NON_EMPTY or not isinstance(value, (list, tuple)):
        return None
    if not value:
        return f"must name at least one item (an empty list would run no {name.rstrip('s')})"
    if name == "seeds":
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
            return "must be non-negative ints"
        if len(set(value)) != len(value):
            return "repeats a seed (each seed would count twice in the statistics)"
    return None


def check_parameter_types(
    defaults: Mapping[str, Any], parameters: Mapping[str, Any], notebook: str, where: str
) -> None:
    """Raise ValueError naming the first parameter whose value does not fit its default's type
    (see the module docstring), or that names nothing to run (`NON_EMPTY`: ``seeds: []``);
    names without a default are left to the name check."""
    for name, value in parameters.items():
        if name not in defaults:
            continue
        why = _problem(value, defaults[name]) or _value_problem(name, value)
        if why is not None:
            raise ValueError(
                f"{where}: parameter {name!r} = {_kind(value)} {why}; the default in "
                f"{notebook}'s parameters cell is {defaults[name]!r}"
            )


def check_entry_types(
    notebook: str | Path,
    fixed: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
    where: str,
) -> None:
    """`check_parameter_types` for one config entry: its fixed parameters (defaults included)
    and every value of its grid. A notebook without a readable parameters cell is left to the
    name check (`castlib.repro.runs`), which reports it."""
    try:
        defaults = notebook_defaults(notebook)
    except ValueError:
        return
    if defaults is None:
        return
    name = Path(notebook).name
    check_parameter_types(defaults, fixed, name, where)
    for key, values in grid.items():
        for i, value in enumerate(values):
            check_parameter_types(defaults, {key: value}, name, f"{where}.grid.{key}[{i}]")


def check_output_dir(path: str | Path, where: str) -> None:
    """Raise ValueError (one line naming the path) unless ``path`` is, or can be created as, a
    writable folder: not a file, not below a file, not read-only."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"lies below the regular file {probe}"
        raise ValueError(f"{where}: output_dir {path} {what}; it must be a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        whose = "" if probe == path else f" (its existing parent {probe} is read-only)"
        raise ValueError(f"{where}: output_dir {path} is not writable{whose}")
