"""The method registry: methods register themselves where they are defined.

    @register
    class CAST(SteeringMethod): name = "cast"; ...
    register_preset("lora_target_dev", "lora", train_on="target_dev")   # next to LoRA

A *preset* is a label for a registered method with fixed parameters (e.g. ``lora_target_dev``:
LoRA trained on labelled target examples); the notebooks and batch configs name methods by
registry name or preset label (the notebooks' `nbtools.build_method`).

Methods whose module needs an optional extra (``lora`` and ``kasa`` need ``peft``, the
``adapters`` extra) are listed in `LAZY`: their names are always `available`, and their module
(with its presets) is imported on first `get`/`presets`, failing with an ImportError that names
the extra when it is missing. A lazy method's preset labels start with its name
(``lora_...``), so `preset` knows which module to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Method

__all__ = [
    "REGISTRY",
    "PRESETS",
    "LAZY",
    "Preset",
    "register",
    "register_preset",
    "available",
    "get",
    "presets",
    "preset",
]

#: Registered method classes by name (filled by `register` as the method modules are imported).
REGISTRY: dict[str, type[Method]] = {}

#: Registered presets by label (filled by `register_preset`, next to their method).
PRESETS: dict[str, Preset] = {}

#: Methods defined in modules that need an optional extra, imported on first use.
LAZY: dict[str, str] = {
    "lora": "castlib.methods.adapters.lora",
    "kasa": "castlib.methods.adapters.kasa",
}


@dataclass(frozen=True)
class Preset:
    """A registered method (``method``) with fixed parameters, under its own ``label``."""

    label: str
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)


def register(cls: type[Method]) -> type[Method]:
    """Register a method class under ``cls.name`` (a class decorator)."""
    if not cls.name:
        raise ValueError("a method class needs a non-empty name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


def register_preset(label: str, method: str, **params: Any) -> Preset:
    """Register ``label`` as ``method`` with ``params`` fixed (call it next to the method)."""
    if label in REGISTRY or label in LAZY:
        raise ValueError(f"preset label {label!r} is a method name")
    new = Preset(label, method, dict(params))
    if label in PRESETS and PRESETS[label] != new:
        raise ValueError(f"preset {label!r} is already registered as {PRESETS[label]}")
    PRESETS[label] = new
    return new


def _load(name: str) -> None:
    if name in LAZY and name not in REGISTRY:
        importlib.import_module(LAZY[name])


def available() -> list[str]:
    """Names of the registered methods (including those of `LAZY`, not yet imported)."""
    return sorted(set(REGISTRY) | set(LAZY))


def get(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    _load(name)
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available())}")
    return REGISTRY[name]


def presets(method: str) -> list[Preset]:
    """The presets of ``method``, in registration order (importing a `LAZY` method's module)."""
    get(method)
    return [p for p in PRESETS.values() if p.method == method]


def preset(label: str) -> Preset | None:
    """The preset registered under ``label`` (None: not a preset label)."""
    if label not in PRESETS:
        for name in LAZY:  # a lazy method's presets exist once its module is imported
            if label.startswith(name + "_"):
                _load(name)
    return PRESETS.get(label)
