"""Adapters on frozen linear layers: finding the modules, swapping them reversibly, and
folding a weight update into the weights for inference. Shared by the parameter-updating
baselines (`castlib.methods.adapters.lora`, `castlib.methods.adapters.kasa`).

Module swapping: `target_modules` finds the modules to adapt by the last component of their
name (default `DEFAULT_TARGETS`, from `castlib.architectures`: ``q_proj``/``v_proj`` on
Llama-like families and OPT, the fused ``c_attn`` of GPT-2, ``query_key_value`` of
GPT-NeoX/Falcon, ``qkv_proj`` of Phi-3, ``Wqkv`` of MPT), inside the
decoder blocks only. ``apply_adapter(model, adapter)`` replaces each target by the adapter's
wrapper, freezes every parameter of the model (so gradients reach only the adapter) and returns a
handle whose ``remove()`` puts the original module objects back and restores every
``requires_grad`` flag: the model is then exactly as found (bit-identical outputs).

Merged inference (`merged_weights`): for evaluation an adapter can instead be folded into the
weights, ``W <- W + Delta_eff`` (LoRA: ``Delta_eff = (alpha / r) B A``; KaSA:
``Delta_eff = (alpha / r) L diag(sigma) R - U_r S_r V_r^T``), computed in float32 and added in the
weight's dtype, so inference costs exactly a plain forward pass; on exit every weight is copied
back from a saved clone (bit-identical, also after an exception).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from ...architectures import LORA_TARGETS
from ...models import LanguageModel

__all__ = [
    "DEFAULT_TARGETS",
    "target_modules",
    "weight_matrix",
    "kaiming_uniform",
    "WrappingAdapter",
    "AdapterHandle",
    "apply_adapter",
    "merged_weights",
    "freeze",
]

#: Last name components of the modules adapted by default (attention query/value projections,
#: or the fused QKV projection where a family has one): `castlib.architectures.LORA_TARGETS`.
DEFAULT_TARGETS: tuple[str, ...] = LORA_TARGETS


# ----------------------------------------------------------------------------------------------
# finding and reading target modules
# ----------------------------------------------------------------------------------------------


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): ``y = x @ weight + bias`` with ``weight [d_in, d_out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The ``[d_out, d_in]`` weight of a linear module (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if _is_conv1d(module):
        return module.weight.T
    raise TypeError(f"cannot adapt a {type(module).__name__}: not nn.Linear or Conv1D")


def target_modules(lm: LanguageModel, patterns: Sequence[str] | None = None) -> list[str]:
    """Names (in ``lm.model``) of the linear modules inside the decoder blocks whose last name
    component is one of ``patterns`` (default `DEFAULT_TARGETS`)."""
    patterns = tuple(patterns) if patterns else DEFAULT_TARGETS
    prefix = lm.blocks_path + "."
    found = [
        name
        for name, mod in lm.model.named_modules()
        if name.startswith(prefix)
        and name.rpartition(".")[2] in patterns
        and (isinstance(mod, nn.Linear) or _is_conv1d(mod))
    ]
    if not found:
        raise ValueError(
            f"no linear module named one of {list(patterns)} in the decoder blocks of {lm.name}"
        )
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def kaiming_uniform(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """``nn.init.kaiming_uniform_(w, a=sqrt(5))`` for a ``[rows, cols]`` weight (fan-in =
    ``cols``): ``U(-1/sqrt(cols), 1/sqrt(cols))``, drawn from ``generator``."""
    bound = 1.0 / math.sqrt(cols)
    return torch.empty(rows, cols).uniform_(-bound, bound, generator=generator)


# ----------------------------------------------------------------------------------------------
# attaching and removing
# ----------------------------------------------------------------------------------------------


class AdapterHandle:
    """An attached adapter: its trainable parameters and regulariser; ``remove()`` (or leaving
    its ``with`` block) puts the original modules and ``requires_grad`` flags back."""

    def __init__(
        self,
        model: nn.Module,
        originals: dict[str, nn.Module],
        requires_grad: dict[str, bool],
        params: list[nn.Parameter],
        regularizer: Any = None,
        on_remove: Any = None,
    ) -> None:
        self.model = model
        self._originals = originals
        self._requires_grad = requires_grad
        self.params = params
        self._regularizer = regularizer
        self._on_remove = on_remove
        self.active = True

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params)

    def regularizer(self) -> torch.Tensor | None:
        return None if self._regularizer is None else self._regularizer()

    def remove(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            if self._on_remove is not None:
                self._on_remove()
        finally:
            for name, module in self._originals.items():
                _set_submodule(self.model, name, module)
            params = dict(self.model.named_parameters())
            for name, flag in self._requires_grad.items():
                params[name].requires_grad_(flag)

    def __enter__(self) -> AdapterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def freeze(model: nn.Module) -> dict[str, bool]:
    """Set ``requires_grad=False`` on every parameter; returns the previous flags."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


class WrappingAdapter(Protocol):
    """An adapter that runs as wrapper modules (KaSA's `castlib.methods.adapters.kasa.KaSAAdapter`):
    the names of its target modules, a wrapper for each, its parameters and its regulariser."""

    names: list[str]

    def wrap(self, name: str, module: nn.Module) -> nn.Module: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def regularizer(self) -> torch.Tensor: ...


def apply_adapter(model: nn.Module, adapter: WrappingAdapter) -> AdapterHandle:
    """Swap every target module of ``model`` for the adapter's wrapper (model frozen, adapter
    trainable). ``handle.remove()`` restores the original modules and flags exactly."""
    originals = {name: model.get_submodule(name) for name in adapter.names}
    wrappers = {name: adapter.wrap(name, module) for name, module in originals.items()}
    flags = freeze(model)
    for p in adapter.parameters():
        p.requires_grad_(True)
    handle = AdapterHandle(model, originals, flags, list(adapter.parameters()), adapter.regularizer)
    try:
        for name, wrapper in wrappers.items():
            _set_submodule(model, name, wrapper)
    except BaseException:
        handle.remove()
        raise
    return handle


@contextmanager
def merged_weights(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Add ``deltas[name]`` (a ``[d_out, d_in]`` matrix) to the weight of each named linear
    module for the duration of the block; the original weights are restored exactly on exit."""
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name, delta in deltas.items():
                module = model.get_submodule(name)
                w = module.weight
                shape = tuple(weight_matrix(module).shape)
                if tuple(delta.shape) != shape:
                    raise ValueError(
                        f"delta for {name} is {tuple(delta.shape)}, the module's weight is {shape}"
                    )
                saved[name] = w.detach().clone()
                d = delta.T if _is_conv1d(module) else delta
                merged = w.detach().float() + d.to(device=w.device, dtype=torch.float32)
                w.copy_(merged.to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                model.get_submodule(name).weight.copy_(original)
