"""KaSA: knowledge-aware singular-value adaptation (Wang et al., ICLR 2025, arXiv:2412.06071),
the second parameter-updating reference of CAST_SPEC "Baselines".

Each target linear module ``W = U S V^T`` runs as

    y = W' x + b + (alpha / r) L diag(sigma) R x,     W' = W - sum of its r smallest components,

with ``L [d_out, r]``, ``sigma [r]``, ``R [r, d_in]`` trained under the task loss plus
``beta ||L^T L - I||_F^2 + gamma ||R R^T - I||_F^2 + sigma_l2 ||sigma||^2`` (the math and
initialisation are in `castlib.adapters`). Training data, loss, protocol and persistence are
those of `castlib.methods.lora` (``train_on="source"``: CAST's m selected source samples;
``"target_dev"``: <= 32 labelled target examples; answer-token causal-LM loss). The truncation
is applied by the wrapper, never written into the model's weights, so the loaded model is left
exactly as found.
"""

from __future__ import annotations

import dataclasses

import torch

from ..adapters import AdapterHandle, KaSAAdapter, apply_adapter
from ..models import LanguageModel
from .lora import AdapterMethod
from .registry import register, register_preset

__all__ = ["KaSA"]


@register
class KaSA(AdapterMethod):
    """KaSA adapters (see the module docstring)."""

    name = "kasa"

    @dataclasses.dataclass(frozen=True)
    class Params(AdapterMethod.Params):
        beta: float = 1e-3  # ||L^T L - I||_F^2
        gamma: float = 1e-3  # ||R R^T - I||_F^2
        sigma_l2: float = 1e-4  # ||sigma||_2^2 (the paper's singular-value penalty)

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        if min(p.beta, p.gamma, p.sigma_l2) < 0:
            raise ValueError("beta, gamma and sigma_l2 must be >= 0")

    def _weights(self) -> dict[str, float]:
        p = self.params
        return {"alpha": p.lora_alpha, "beta": p.beta, "gamma": p.gamma, "sigma_l2": p.sigma_l2}

    def build_adapter(self, lm: LanguageModel, names: list[str], seed: int) -> KaSAAdapter:
        w = self._weights()
        return KaSAAdapter.build(lm.model, names, r=self.params.r, seed=seed, **w)

    def attach(self, lm: LanguageModel) -> AdapterHandle:
        return apply_adapter(lm.model, self.adapter)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return self.adapter.state_tensors()

    def restore_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        self.adapter = KaSAAdapter.from_tensors(tensors, self.names, **self._weights())


register_preset("kasa_source", "kasa", train_on="source")
register_preset("kasa_target_dev", "kasa", train_on="target_dev")
