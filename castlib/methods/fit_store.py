"""Fitted methods kept for reuse across targets: a fit that reads no target row is done once.

Most methods read the target while fitting (CAST and the other steering methods choose their
layer and alpha on target tuning rows; the adapters train on CAST's target-aware selection). A
method whose class sets ``fit_reads_target = False`` (I2CL: its demonstrations, context vectors
and calibration come from the source tasks alone) computes the same state for every target, so
a batch that runs it for five targets and one seed can fit it once. `FitStore` keeps such fits
on disk, one `Method.save` folder per key

    sha256(method name | parameters | source tasks | seed | model fingerprint | code | versions)

where the source tasks count with their definition and every train row (`task_fingerprint`),
the model with `castlib.activation_store.model_fingerprint` (weights sampled, dtype, config) and
its device type, and the code with the source files of the method's module and of the castlib
modules it names directly (`code_fingerprint`), plus castlib's, torch's and transformers'
versions. A stored fit is reloaded only when every part matches; a folder that cannot be read
counts as a miss and is replaced.

A batch's fit store is the ``fits/`` folder of its on-disk activation store (`fit_store_for`:
the batch runner (``castlib run``) points every kernel at one through ``$CASTLIB_ACTIVATION_STORE``), or the
folder ``$CASTLIB_FIT_STORE`` names (a run config's ``fit_store`` key: a folder that outlives
the batch's output, e.g. one kept in git, so that a long fit and its checkpoints carry over to a
machine that continues the batch); a model with a memory-only store, or none, and no
``$CASTLIB_FIT_STORE``, never reuses a fit. The record of a reused fit says so
(``fit_reused_from``: the target it was fitted with) and keeps the original ``fit_seconds``,
the cost of the fit, not of reading it back.

A stored fit that is long may checkpoint while it runs (`FitStore.scratch`: I2CL saves its
calibration state after every epoch) and resume from the last checkpoint when it is run again
after an interruption, with the result it would have had uninterrupted (tested bit for bit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import torch

from .._version import __version__
from ..activation_store import model_fingerprint
from ..models import LanguageModel
from ..tasks import Task

__all__ = [
    "StoredMethod",
    "FitStore",
    "fit_store_for",
    "task_fingerprint",
    "code_fingerprint",
    "FITS_FOLDER",
    "FIT_STORE_ENV",
]

#: The sub-folder of an on-disk activation store that holds a batch's fits.
FITS_FOLDER = "fits"
#: Names a fit store folder that takes the place of ``<activation store>/fits``.
FIT_STORE_ENV = "CASTLIB_FIT_STORE"
#: Parameters that change nothing in a fit's result (progress bars).
IGNORED_PARAMS = ("progress", "data_dir")


class StoredMethod(Protocol):
    """What the store reads of a method (a `castlib.methods.base.Method`; this module does not
    import it, so that the methods can import the store): its registered name, its parameters
    (a dataclass), `save`, and the class's ``_restore`` (the inverse of `save`)."""

    name: str
    params: Any

    def save(self, folder: str | Path) -> Path: ...


#: A stored method's class.
M = TypeVar("M", bound=StoredMethod)


def task_fingerprint(task: Task) -> str:
    """A hex digest of a task's definition (name, kind, labels, instruction, fields) and of
    every row of its train split, the only split a source task gives a fit."""
    digest = hashlib.sha256()
    head = [task.name, task.kind, list(task.labels), task.instruction, list(task.fields)]
    head += [dict(task.field_roles), task.language]
    digest.update(json.dumps(head, sort_keys=True).encode())
    for ex in task.split("train"):
        row = [ex.id, dict(ex.fields), ex.label, None if ex.options is None else list(ex.options)]
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()


def _castlib_modules(module: ModuleType) -> set[str]:
    """The castlib modules that ``module`` names at its top level (imported modules, and the
    modules of imported functions and classes), itself included."""
    names = {module.__name__}
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.split(".")[0] == "castlib":
            names.add(name)
    return names


def code_fingerprint(cls: type) -> str:
    """A hex digest of the source files of ``cls``'s module, of `castlib.methods.base` and of
    the castlib modules either names directly; a change to any of them gives other keys."""
    names = _castlib_modules(sys.modules[cls.__module__])
    names |= _castlib_modules(sys.modules["castlib.methods.base"])
    digest = hashlib.sha256()
    for name in sorted(names):
        path = getattr(sys.modules.get(name), "__file__", None)
        digest.update(name.encode())
        if path and Path(path).is_file():
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _versions() -> list[str]:
    import transformers

    return [__version__, torch.__version__, transformers.__version__]


class FitStore:
    """Saved fits of target-independent methods in ``folder`` (one sub-folder per key)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def key(
        self, method: StoredMethod, lm: LanguageModel, sources: Sequence[Task], seed: int
    ) -> str | None:
        """The key of ``method``'s fit on ``lm``, ``sources`` and ``seed``; None when the model's
        weights cannot be read (offloaded), which never reuses a fit."""
        weights = model_fingerprint(lm.model)
        if weights is None:
            return None
        params = dataclasses.asdict(method.params)
        for name in IGNORED_PARAMS:
            params.pop(name, None)
        parts = {
            "method": method.name,
            "params": params,
            "sources": [[t.name, task_fingerprint(t)] for t in sources],
            "seed": seed,
            "model": [lm.name, weights, torch.device(lm.device).type],
            "code": code_fingerprint(type(method)),
            "versions": _versions(),
        }
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key

    def load(self, key: str, cls: type[M]) -> M | None:
        """The ``cls`` method saved under ``key``, or None (absent, or unreadable: then a
        warning, and the caller fits again)."""
        path = self._path(key)
        where = path / "method.json"
        if not where.is_file():
            return None
        try:
            doc = json.loads(where.read_text(encoding="utf-8"))
            if doc.get("method") != cls.name:
                raise ValueError(f"holds {doc.get('method')!r}, not {cls.name!r}")
            return cls._restore(path, doc)
        except Exception as err:  # noqa: BLE001 - a torn or foreign folder is a miss
            warnings.warn(f"fit store: {path} unreadable ({err}); fitting again", stacklevel=2)
            return None

    def scratch(self, key: str) -> Path:
        """The folder where the fit of ``key`` may keep checkpoints while it runs (created
        by whoever writes there; removed by `save`)."""
        return self.folder / f"{key}.partial"

    def save(self, key: str, method: StoredMethod) -> Path:
        """Save ``method`` under ``key`` (into a temporary folder renamed into place, so a
        concurrent reader never sees half a save; an existing save is replaced) and remove the
        fit's checkpoints."""
        path = self._path(key)
        tmp = path.with_name(f"{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        method.save(tmp)
        shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:  # another process saved the same fit meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.scratch(key), ignore_errors=True)
        return path

    def __repr__(self) -> str:
        return f"FitStore({str(self.folder)!r})"


def fit_store_for(lm: LanguageModel) -> FitStore | None:
    """The fit store named by ``$CASTLIB_FIT_STORE``, else that of ``lm``'s on-disk activation
    store (``<folder>/fits``), else None."""
    named = os.environ.get(FIT_STORE_ENV)
    if named:
        return FitStore(Path(named).expanduser())
    store: Any = getattr(lm, "activation_store", None)
    folder = getattr(store, "folder", None)
    if folder is None:
        return None
    return FitStore(Path(folder) / FITS_FOLDER)
