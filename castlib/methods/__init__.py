"""Methods behind one protocol, and their registry.

    method = castlib.methods.get("cast")(m=32, k=4)
    method.fit(lm, sources=["sst2"], target="financial_phrasebank", seed=0)
    record = method.evaluate(lm, "financial_phrasebank", limit=200)

Registered: cast, zero_shot, few_shot, cross_task_icl, task_vector, icv, function_vector, i2cl,
lora, kasa.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import RESULT_FIELDS, Method
from .cast import CAST
from .cross_task_icl import CrossTaskICL
from .few_shot import FewShotMethod
from .function_vector import FunctionVector
from .i2cl import I2CL
from .icv import ICV
from .kasa import KaSA
from .lora import LoRA
from .task_vector import TaskVector
from .zero_shot import ZeroShotMethod

__all__ = ["Method", "RESULT_FIELDS", "REGISTRY", "get", "available", "register", "load"]

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        CAST,
        ZeroShotMethod,
        FewShotMethod,
        CrossTaskICL,
        TaskVector,
        ICV,
        FunctionVector,
        I2CL,
        LoRA,
        KaSA,
    )
}


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def get(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available())}")
    return REGISTRY[name]


def register(cls: type[Method]) -> type[Method]:
    """Register a method class under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError("a method class needs a non-empty name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


def load(folder: str | Path) -> Method:
    """Reload a method saved with ``method.save(folder)``, ready to evaluate."""
    folder = Path(folder)
    path = folder / "method.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; is {folder} a folder saved by method.save?"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON (truncated or corrupt?): {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        raise ValueError(f"{path}: no 'method' name; was it written by method.save?")
    try:
        cls = get(doc["method"])
    except KeyError as err:
        raise ValueError(f"{path}: {err.args[0]}") from err
    return cls._restore(folder, doc)
