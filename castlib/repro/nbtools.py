"""Helpers shared by the reproduction notebooks (``notebooks/0*_*.ipynb``).

The notebooks are parameterised (one ``parameters`` cell, run in batch by papermill through
`castlib.repro.runs`) and regression-tested by nbval, so what they print must be deterministic. These
helpers keep that contract in one place:

* `sample_test` -- a seeded subsample of a task's test split, the same for every method and seed
  (some task files are ordered by label, so a prefix ``limit`` would be biased);
* `notebook_parameters` -- the run's parameters: the names the notebook's own ``parameters``
  cell assigns, with their values in the kernel (papermill's injected ones included);
* `method_plan` / `expand_methods` / `build_method` -- method labels (registry names and the
  presets registered next to each method, e.g. ``lora_target_dev``) to configured
  `castlib.methods` instances, with the notebook's parameters filtered to the ones each method
  accepts;
* `source_groups` -- the source lists a method is fitted on: all sources pooled, or one run per
  source for a method that takes one source per fit (cross-task ICL);
* `icl_deltas` -- per-example ICL enhancements ``delta_l(x) = h_l(Pk(x; D_x)) - h_l(P0(x))``;
* `flat_record` / `write_results` / `write_table` / `save_figure` -- the structured outputs a run
  leaves in ``output_dir`` (``results.json`` is what `castlib.repro.runs` aggregates);
* `params_table`, `mean_std`, `verdict`, `fmt` -- deterministic, rounded display;
* `peak_memory` -- absolute peak memory of a block (for cost ratios between methods);
* `setup` -- the notebooks' common setup: display options, ``output_dir`` and the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..methods import available, get, preset, presets
from ..methods.base import Method
from ..methods.steering import icl_activations
from ..models import LanguageModel, load_model
from ..profiling import profile
from ..tasks import Example, Task, load_task, sample_examples
from ..validate import check_optional_positive_int
from . import plots
from .runs.config import declared_parameters

__all__ = [
    "DROP_FIELDS",
    "build_method",
    "expand_methods",
    "flat_record",
    "fmt",
    "icl_deltas",
    "load_tasks",
    "MethodPlan",
    "mean_std",
    "method_plan",
    "notebook_parameters",
    "output_path",
    "params_table",
    "peak_memory",
    "sample_test",
    "save_figure",
    "setup",
    "source_groups",
    "verdict",
    "write_results",
    "write_table",
]

#: Record fields too bulky for results.json (kept out of the flat records).
DROP_FIELDS = ("tuning_grid",)

_PATH_PARAMS = ("output_dir", "data_dir")


def output_path(output_dir: str | Path) -> Path:
    """``output_dir`` as a Path, created (with parents) if missing."""
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup(
    model: str,
    device: str = "auto",
    output_dir: str | Path = "results",
    dtype: str = "auto",
) -> tuple[LanguageModel, Path]:
    """The common setup of the reproduction notebooks, run right after their parameters cell.

    Sets the display of tables and figures (`castlib.repro.plots.set_theme`; pandas shows 3 decimals
    in 120 columns; both process-wide, as display settings are), creates ``output_dir`` and loads
    ``model`` on ``device`` in ``dtype`` (`castlib.load_model`: ``"auto"`` is bfloat16 on a CUDA
    device that supports it, float32 elsewhere; every result record names the dtype it ran in).

    Returns:
        ``(lm, out)``: the loaded model and ``output_dir`` as a Path.
    """
    plots.set_theme()
    pd.set_option("display.precision", 3)
    pd.set_option("display.width", 120)
    out = output_path(output_dir)
    return load_model(model, device=device, dtype=dtype), out


def params_table(params: Mapping[str, Any], hide: Iterable[str] = _PATH_PARAMS) -> pd.DataFrame:
    """A one-column table of a run's parameters (paths hidden: they differ between machines)."""
    hidden = set(hide)
    rows = {k: json.dumps(v, default=str) for k, v in params.items() if k not in hidden}
    return pd.DataFrame({"value": pd.Series(rows, dtype=object)}).rename_axis("parameter")


def notebook_parameters(namespace: Mapping[str, Any], notebook: str | Path) -> dict[str, Any]:
    """The run's parameters: every name the ``parameters`` cell of ``notebook`` assigns (in its
    order), with its value in ``namespace`` (a notebook passes ``globals()``, where papermill's
    injected values have replaced the defaults).

    ``notebook`` is the notebook's own file (``"02_cross_domain.ipynb"``), relative to the
    working directory, which is the notebook's folder in Jupyter, nbval and papermill batches.
    The names come from the file, never from what the kernel happens to hold, so the parameters
    table shows exactly the parameters cell.
    """
    path = Path(notebook)
    if not path.is_file():
        raise FileNotFoundError(
            f"notebook_parameters: {path} not found (working directory {Path.cwd()}); "
            "run the notebook from its own folder, or pass its path"
        )
    names = declared_parameters(path)
    if names is None:
        raise ValueError(f"notebook_parameters: {path} has no cell tagged 'parameters'")
    missing = [name for name in names if name not in namespace]
    if missing:
        raise NameError(
            f"notebook_parameters: {missing} are assigned in the parameters cell of {path} but "
            "not defined in the namespace given (run the parameters cell first)"
        )
    return {name: namespace[name] for name in names}


def sample_test(task: Task, n: int | None, seed: int = 0, split: str = "test") -> Task:
    """``task`` with its ``split`` replaced by a seeded random sample of ``n`` examples.

    The sample depends on ``seed`` only (not on the method or the run's seed), so every method
    is scored on the same examples; ``n=None`` (or ``n >= len(split)``) keeps the whole split in
    its file order. Other splits are untouched. ``n`` must be None or an int >= 1 (a YAML
    ``n_test: yes`` or ``"16"`` is refused, naming ``n``).
    """
    n = check_optional_positive_int(n, "sample_test: n (the number of test rows; None: all)")
    rows = sample_examples(task.split(split), n, seed)
    return dataclasses.replace(task, splits={**task.splits, split: rows})


def expand_methods(methods: str | Sequence[str]) -> list[str]:
    """Method labels to run: a list as given, or ``"all"``: every registered method with its
    registered presets (`castlib.methods.presets`). A preset that fixes the method's default
    configuration stands for the method, whose bare name is then not listed: ``cross_task_icl``
    is split into its ``random`` and ``similar`` demonstrations, ``lora`` and ``kasa`` into
    training on the selected ``source`` samples or on labelled ``target_dev`` examples; the
    steering methods run as themselves (``source`` tuning) and as ``<name>_target_dev``."""
    if isinstance(methods, str):
        if methods != "all":
            return [methods]
        out: list[str] = []
        for name in available():
            labels = [p.label for p in presets(name)]
            if not any(_is_default(name, p.params) for p in presets(name)):
                labels.insert(0, name)
            out += labels
        return out
    return list(methods)


def _is_default(name: str, params: Mapping[str, Any]) -> bool:
    """Whether ``params`` leave method ``name`` at its default parameters."""
    defaults = {f.name: f.default for f in dataclasses.fields(get(name).Params)}
    return all(name_ in defaults and defaults[name_] == v for name_, v in params.items())


def build_method(
    label: str,
    shared: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    data_dir: str | Path | None = None,
) -> Method:
    """A configured method for ``label`` (a registry name or a registered preset label).

    Parameters, later wins: the ``shared`` ones the method's ``Params`` accepts and uses (the
    others, and those in the method's ``unused_params``, are ignored, so ``k`` or ``layers`` can
    be given once for all methods), the preset's fixed ones,
    then ``overrides[label]`` (else ``overrides[registry name]``), passed as is (an unknown name
    there raises).
    """
    fixed = preset(label) if label not in available() else None
    name, fixed_params = (fixed.method, dict(fixed.params)) if fixed else (label, {})
    cls = get(name)
    accepted = {f.name for f in dataclasses.fields(cls.Params)}
    unused = set(cls.unused_params)
    params = {k: v for k, v in (shared or {}).items() if k in accepted and k not in unused}
    params.update(fixed_params)
    overrides = overrides or {}
    params.update(overrides.get(label, overrides.get(name, {})))
    if data_dir is not None and "data_dir" in accepted:
        params["data_dir"] = str(data_dir)
    return cls(**params)


#: Notebook parameters with a name of their own: parameter -> (registry name of the one method it
#: is for, or None for every method that accepts it; the method's ``Params`` field).
PARAMETER_ALIASES: dict[str, tuple[str | None, str]] = {
    "train_steps": (None, "steps"),
    "icl_k": ("cross_task_icl", "k"),
    "cast_alphas": ("cast", "alphas"),
    "icv_alphas": ("icv", "alphas"),
}
#: Parameters of the run itself, never handed to a method even where a method's ``Params`` has
#: a field of that name (LoRA's ``targets`` are modules, a notebook's are tasks).
RUN_PARAMETERS = frozenset(
    {"model", "device", "dtype", "data_dir", "output_dir", "methods", "method_params", "seeds"}
    | {"n_test"}
    | {"targets", "sources", "pairs", "families"}
)


@dataclasses.dataclass(frozen=True)
class MethodPlan:
    """The methods a notebook runs and how each is configured (`method_plan`)."""

    #: method labels in run order (`expand_methods`)
    labels: list[str]
    #: parameters given once for every method that accepts them (`build_method`'s ``shared``)
    shared: dict[str, Any]
    #: parameters per registry name or label (`build_method`'s ``overrides``)
    overrides: dict[str, dict[str, Any]]
    data_dir: str | Path | None = None

    def build(self, label: str) -> Method:
        """A configured method for ``label`` (`build_method`)."""
        return build_method(label, self.shared, self.overrides, self.data_dir)


def method_plan(parameters: Mapping[str, Any]) -> MethodPlan:
    """The methods of a notebook run and their parameters, from the run's parameters
    (`notebook_parameters`).

    * labels: ``parameters["methods"]`` (`expand_methods`);
    * shared: every parameter a registered method's ``Params`` has a field for (except the
      `RUN_PARAMETERS`), and each `PARAMETER_ALIASES` entry for every method under its field's
      name (``train_steps`` -> ``steps``); ``None`` leaves each method at its default;
    * overrides: the aliases for one method (``cast_alphas`` -> ``cast``'s ``alphas``; None:
      its default), then ``parameters["method_params"]`` per label, on top of its method's
      overrides (a preset label such as ``cast_target_dev`` keeps ``cast``'s).

    So a method with new hyper-parameters needs no notebook change: its ``Params`` defaults,
    its presets and a config's ``method_params`` configure it, and a parameters-cell name equal
    to one of its fields reaches it.
    """
    fields = {f.name for name in available() for f in dataclasses.fields(get(name).Params)}
    shared: dict[str, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for name, value in parameters.items():
        if value is None:
            continue
        if name in PARAMETER_ALIASES:
            method, field = PARAMETER_ALIASES[name]
            target = shared if method is None else overrides.setdefault(method, {})
            target[field] = value
        elif name in fields and name not in RUN_PARAMETERS:
            shared[name] = value
    for label, extra in (parameters.get("method_params") or {}).items():
        fixed = preset(label)
        base = fixed.method if fixed else label
        overrides[label] = {**overrides.get(label, overrides.get(base, {})), **extra}
    return MethodPlan(
        labels=expand_methods(parameters["methods"]),
        shared=shared,
        overrides=overrides,
        data_dir=parameters.get("data_dir"),
    )


def source_groups(label: str, sources: Sequence[str]) -> list[list[str]]:
    """The source lists method ``label`` is fitted on in a run over ``sources``: one run per
    source (``[[s1], [s2], ...]``) for a method that takes one source per fit
    (`castlib.methods.base.Method.one_source`: cross-task ICL, run per (source, target) pair as
    Chatterjee et al. do), else one run on all of them pooled (``[sources]``)."""
    fixed = preset(label) if label not in available() else None
    cls = get(fixed.method if fixed else label)
    return [[s] for s in sources] if cls.one_source else [list(sources)]


def _demos(pool: Sequence[Example], x: Example, k: int, rng: random.Random) -> list[Example]:
    others = [e for e in pool if e.id != x.id]
    return rng.sample(others, min(k, len(others)))


def icl_deltas(
    lm: LanguageModel,
    task: Task,
    n: int,
    k: int,
    seed: int = 0,
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ICL enhancements of ``n`` seeded train examples of ``task``.

    For each x (a seeded sample of ``min(n, len(train))`` train examples) the demonstrations
    D_x are ``k`` other train examples (seeded), and
    ``delta_l(x) = h_l(Pk(x; D_x)) - h_l(P0(x))``.

    Returns:
        ``(deltas, h_k, h_0)``, each float32 ``[n, n_layers, hidden]`` (all layers, or
        ``layers``).
    """
    rng = random.Random(seed)
    pool = list(task.train)
    if len(pool) < 2:
        raise ValueError(f"task {task.name} has fewer than 2 train examples")
    xs = rng.sample(pool, min(n, len(pool)))
    items = [(task, x, _demos(pool, x, k, rng)) for x in xs]
    h_k, h_0 = icl_activations(lm, items, batch_size=batch_size, layers=layers)
    return h_k - h_0, h_k, h_0


def _flat_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def flat_record(record: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A JSON-ready flat copy of a method's result record plus ``extra`` fields.

    Lists and dicts (``params``, ``sources``, ``selected_ids``, ...) become JSON strings, non-finite
    floats become None, and `DROP_FIELDS` are left out; ``extra`` wins over the record.
    """
    out = {k: _flat_value(v) for k, v in record.items() if k not in DROP_FIELDS}
    out.update({k: _flat_value(v) for k, v in extra.items()})
    return out


def write_results(
    records: Sequence[Mapping[str, Any]], output_dir: str | Path, csv_name: str = "results.csv"
) -> Path:
    """Write ``results.json`` (the list of flat records `castlib.repro.runs` aggregates) and the same
    rows, without the per-example ``predictions``, as a CSV into ``output_dir``; returns the
    JSON path."""
    out = output_path(output_dir)
    rows = [flat_record(r) for r in records]
    path = out / "results.json"
    path.write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")
    # per-example predictions stay in results.json only
    pd.DataFrame([{k: v for k, v in r.items() if k != "predictions"} for r in rows]).to_csv(
        out / csv_name, index=False
    )
    return path


def write_table(table: pd.DataFrame, output_dir: str | Path, name: str) -> Path:
    """Write ``table`` as ``output_dir/name`` (``.csv`` appended when missing)."""
    path = output_path(output_dir) / (name if name.endswith(".csv") else f"{name}.csv")
    table.to_csv(path, index=not isinstance(table.index, pd.RangeIndex))
    return path


def save_figure(fig: Any, output_dir: str | Path, name: str, dpi: int = 120) -> None:
    """Save a matplotlib figure as ``output_dir/name`` (``.png`` appended when missing).

    Returns nothing, so a call at the end of a cell displays nothing extra.
    """
    path = output_path(output_dir) / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def mean_std(
    frame: pd.DataFrame, by: Sequence[str], value: str = "accuracy", decimals: int = 3
) -> pd.DataFrame:
    """Mean, sample std (0 with one row) and count of ``value`` per ``by`` group, rounded."""
    grouped = frame.groupby(list(by), sort=False)[value]
    out = grouped.agg(mean="mean", std="std", n="count")
    out["std"] = out["std"].fillna(0.0)
    return out.round(decimals)


def verdict(a: float, b: float, tol: float = 1e-9) -> str:
    """``"beats"``, ``"ties with"`` or ``"does not beat"``: how ``a`` compares with ``b``."""
    if a > b + tol:
        return "beats"
    if abs(a - b) <= tol:
        return "ties with"
    return "does not beat"


def fmt(x: float | None, decimals: int = 3) -> str:
    """A rounded number for printed conclusions (``n/a`` for None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{decimals}f}"


@contextmanager
def peak_memory(device: torch.device | str, interval: float = 0.005) -> Iterator[dict[str, float]]:
    """Absolute peak memory (MiB) of the block, filled in on exit as ``out["peak_mb"]``
    (`castlib.profiling.profile`'s ``peak_mb``).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (weights included). Elsewhere: the
    process's peak resident set size, sampled every ``interval`` seconds in a thread (weights
    included). Unlike a growth measure, it does not depend on what earlier code left allocated,
    so ratios between methods run one after the other are meaningful.
    """
    out: dict[str, float] = {}
    prof = None
    try:
        with profile(device, interval=interval) as prof:
            yield out
    finally:
        if prof is not None:
            out["peak_mb"] = prof.peak_mb


def load_tasks(names: Iterable[str], data_dir: str | Path | None = None) -> dict[str, Task]:
    """``{name: Task}`` for ``names`` (in order, without repeats)."""
    return {name: load_task(name, data_dir) for name in dict.fromkeys(names)}
