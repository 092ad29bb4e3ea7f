"""Methods behind one protocol, and their registry.

    method = castlib.methods.get("cast")(m=32, k=4)
    method.fit(lm, sources=["sst2"], target="financial_phrasebank", seed=0)
    record = method.evaluate(lm, "financial_phrasebank", limit=200)
    records = castlib.methods.evaluate_methods(lm, [m1, m2, m3], "financial_phrasebank")

Registered: cast, zero_shot, few_shot, cross_task_icl, task_vector, icv, function_vector, i2cl,
and (with the ``adapters`` extra, ``pip install "castlib[adapters]"``) lora and kasa. Each method
registers itself where it is defined (`castlib.methods.registry.register`), with its presets
(`register_preset`, e.g. ``lora_target_dev``). The steering methods' labelled-target protocol
(CAST_SPEC step 5, ``protocol="target_dev"``: layer and alpha chosen on <= 32 labelled target
train rows) has one label each, registered here for all four at once (`TARGET_DEV_PRESETS`):
``cast_target_dev``, ``task_vector_target_dev``, ``icv_target_dev``,
``function_vector_target_dev``. I2CL's labelled-target variant, ``i2cl_target_dev`` (its
coefficients calibrated on labelled target rows), is registered next to it
(`castlib.methods.i2cl`).
"""

from __future__ import annotations

import json
from pathlib import Path

# importing the method modules registers them (lora and kasa: on first use, see registry.LAZY)
from . import (  # noqa: F401
    cast,
    cross_task_icl,
    few_shot,
    function_vector,
    i2cl,
    icv,
    task_vector,
    zero_shot,
)
from .base import Method
from .registry import (
    PRESETS,
    REGISTRY,
    Preset,
    available,
    get,
    preset,
    presets,
    register,
    register_preset,
)
from .shared_eval import RESULT_FIELDS, evaluate_methods

__all__ = [
    "TARGET_DEV_PRESETS",
    "Method",
    "evaluate_methods",
    "RESULT_FIELDS",
    "REGISTRY",
    "PRESETS",
    "Preset",
    "get",
    "available",
    "register",
    "register_preset",
    "presets",
    "preset",
    "load",
]

#: Steering methods that also run under ``protocol="target_dev"``, as ``<name>_target_dev``.
TARGET_DEV_PRESETS = ("cast", "task_vector", "icv", "function_vector")
for _name in TARGET_DEV_PRESETS:
    register_preset(f"{_name}_target_dev", _name, protocol="target_dev")


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
