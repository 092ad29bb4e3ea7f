"""LoRA fine-tuning (Hu et al., ICLR 2022) through the PEFT library: the parameter-updating
reference of CAST_SPEC "Baselines".

For each target linear module (`castlib.methods.adapters.layers.target_modules`: the attention
query/value projections, or the fused QKV projection) with frozen weight ``W [d_out, d_in]``,

    y = W x + b + (alpha / r) B A x,      A in R^{r x d_in},  B in R^{d_out x r},

``A`` Kaiming-uniform (``U(-1/sqrt(d_in), 1/sqrt(d_in))``, seeded), ``B = 0``. The LoRA layers are
PEFT's (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``); castlib injects them only inside
``fit`` and ``applied(lm)``, copies the adapter weights in and out, and then puts the original
module objects and ``requires_grad`` flags back, so the loaded model is left exactly as found.

Training data (CAST's m selected source samples, or <= 32 labelled target examples), loss
(answer tokens only), evaluation (``(alpha / r) B A`` folded into ``W`` with ``merge=True``, or
the PEFT layers) and persistence are those of every adapter method
(`castlib.methods.adapters.base`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...models import LanguageModel
from ..registry import register, register_preset
from .base import AdapterMethod
from .layers import AdapterHandle, _is_conv1d, freeze, kaiming_uniform, weight_matrix

__all__ = ["LoRA", "PeftLoraAdapter"]

ADAPTER_NAME = "castlib"


class PeftLoraAdapter:
    """LoRA weights for named modules, attached to a model through PEFT on demand."""

    def __init__(
        self,
        names: list[str],
        r: int,
        alpha: float,
        fan_in_fan_out: bool,
        tensors: dict[str, torch.Tensor],
    ) -> None:
        self.names = list(names)
        self.r = int(r)
        self.alpha = float(alpha)
        self.fan_in_fan_out = bool(fan_in_fan_out)
        self.tensors = tensors  # "<module>.lora_A" [r, d_in], "<module>.lora_B" [d_out, r]

    @classmethod
    def build(
        cls, model: nn.Module, names: list[str], r: int, alpha: float, seed: int
    ) -> PeftLoraAdapter:
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        modules = [model.get_submodule(n) for n in names]
        for name, module in zip(names, modules, strict=True):
            d_out, d_in = weight_matrix(module).shape
            if r > min(d_out, d_in):
                raise ValueError(f"LoRA rank r={r} exceeds the size of {name} ({d_out}x{d_in})")
            tensors[f"{name}.lora_A"] = kaiming_uniform(r, d_in, gen)
            tensors[f"{name}.lora_B"] = torch.zeros(d_out, r)
        conv = {_is_conv1d(m) for m in modules}
        if len(conv) != 1:
            raise ValueError("LoRA targets mix nn.Linear and Conv1D modules")
        return cls(names, r, alpha, conv.pop(), tensors)

    def n_trainable(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """Per module, ``(alpha / r) B A`` as a ``[d_out, d_in]`` matrix (float32)."""
        scale = self.alpha / self.r
        return {
            n: scale * (self.tensors[f"{n}.lora_B"].float() @ self.tensors[f"{n}.lora_A"].float())
            for n in self.names
        }

    def config(self) -> Any:
        import peft

        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            bias="none",
            target_modules=list(self.names),
            fan_in_fan_out=self.fan_in_fan_out,
        )

    def attach(self, model: nn.Module) -> AdapterHandle:
        """Inject PEFT LoRA layers (model frozen, LoRA weights trainable and set to
        ``self.tensors``); the handle's ``remove()`` copies the weights back into
        ``self.tensors`` and restores the original modules, flags and attributes."""
        import peft

        originals = {name: model.get_submodule(name) for name in self.names}
        for name, module in originals.items():
            w = weight_matrix(module)
            if tuple(w.shape) != (
                self.tensors[f"{name}.lora_B"].shape[0],
                self.tensors[f"{name}.lora_A"].shape[1],
            ):
                raise ValueError(
                    f"LoRA weights for {name} do not match the module's weight {tuple(w.shape)}: "
                    "the adapter was made on another model"
                )
        had_config = "peft_config" in model.__dict__
        flags = freeze(model)
        params: list[nn.Parameter] = []

        def sync_back() -> None:
            for name in self.names:
                layer = model.get_submodule(name)
                for part in ("lora_A", "lora_B"):
                    w = getattr(layer, part)[ADAPTER_NAME].weight
                    self.tensors[f"{name}.{part}"] = w.detach().float().cpu().contiguous().clone()

        attached = [False]

        def cleanup() -> None:
            try:
                if attached[0]:
                    sync_back()
            finally:
                if not had_config:
                    model.__dict__.pop("peft_config", None)

        handle = AdapterHandle(model, originals, flags, params, on_remove=cleanup)
        try:
            with torch.random.fork_rng(devices=[]):  # PEFT's own init draws are overwritten
                peft.inject_adapter_in_model(self.config(), model, adapter_name=ADAPTER_NAME)
            for name in self.names:
                layer = model.get_submodule(name)
                for part in ("lora_A", "lora_B"):
                    sub = getattr(layer, part)[ADAPTER_NAME]
                    sub.to(torch.float32)  # float32 adapter weights on half-precision models too
                    w = sub.weight
                    with torch.no_grad():
                        w.copy_(self.tensors[f"{name}.{part}"])
                    w.requires_grad_(True)
                    params.append(w)
            attached[0] = True
        except BaseException:
            handle.remove()
            raise
        return handle


@register
class LoRA(AdapterMethod):
    """LoRA through PEFT (see the module docstring)."""

    name = "lora"

    def build_adapter(self, lm: LanguageModel, names: list[str], seed: int) -> PeftLoraAdapter:
        p = self.params
        return PeftLoraAdapter.build(lm.model, names, p.r, p.lora_alpha, seed)

    def attach(self, lm: LanguageModel) -> AdapterHandle:
        return self.adapter.attach(lm.model)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.adapter.tensors)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "fan_in_fan_out": self.adapter.fan_in_fan_out}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._fan_in_fan_out = bool(state["fan_in_fan_out"])

    def restore_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        p = self.params
        self.adapter = PeftLoraAdapter(
            self.names, p.r, p.lora_alpha, self._fan_in_fan_out, dict(tensors)
        )


register_preset("lora_source", "lora", train_on="source")
register_preset("lora_target_dev", "lora", train_on="target_dev")
