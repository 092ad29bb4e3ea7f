"""KaSA: knowledge-aware singular-value adaptation (Wang et al., "KaSA: Knowledge-Aware
Singular-Value Adaptation of Large Language Models", ICLR 2025, arXiv:2412.06071), the second
parameter-updating reference of CAST_SPEC "Baselines": its maths and the method.

For a frozen linear map ``y = W x + b`` with ``W in R^{d_out x d_in}`` and SVD
``W = U S V^T = sum_i s_i u_i v_i^T`` (``s_1 >= ... >= s_k``, ``k = min(d_out, d_in)``):

1. Knowledge-aware truncation: the ``r`` smallest singular components (the least significant,
   "noisy" directions) are dropped from the frozen base,

       W' = W - sum_{i = k-r+1}^{k} s_i u_i v_i^T = U_{:, :k-r} S_{:k-r} V_{:, :k-r}^T.

2. A trainable update in SVD form,

       Delta W = (alpha / r) L diag(sigma) R,   L in R^{d_out x r}, sigma in R^r, R in R^{r x d_in},

   so the adapted layer computes ``y = W' x + b + (alpha / r) L (sigma * (R x))``.

3. Regularisers added to the task loss that keep ``L`` and ``R`` close to semi-orthogonal (so
   ``sigma`` reads as the singular values of the update),

       Omega = beta ||L^T L - I_r||_F^2 + gamma ||R R^T - I_r||_F^2 + lambda_s ||sigma||_2^2,

   ``lambda_s`` (``sigma_l2``) being the paper's singular-value L2 term. (The orthogonality terms
   are squared Frobenius norms here; PEFT's KaSA variant uses unsquared ones and a single
   coefficient for both.)

Initialisation as in the reference implementation (and PEFT's KaSA variant): ``R`` is
Kaiming-uniform with ``a = sqrt(5)`` (LoRA's ``A``, i.e. ``U(-1/sqrt(d_in), 1/sqrt(d_in))``),
``L = 0`` (so ``Delta W = 0`` at the start) and ``sigma ~ N(0, 1)``, drawn from a seeded generator.

Non-destructive: ``W'`` is never written into the model. The wrapper (`KaSALinear`, swapped in by
`castlib.methods.adapters.layers.apply_adapter`) computes
``W' x + b = base(x) - (U_r S_r)(V_r^T x)`` from the stored factors of the dropped component
(``U_r S_r`` of shape ``[d_out, r]``, ``V_r^T`` of shape ``[r, d_in]``; buffers, saved with the
adapter), so the original module, its weights and its hooks are untouched; merged inference
folds ``(alpha / r) L diag(sigma) R - U_r S_r V_r^T`` into ``W`` and restores it exactly.

Training data, loss, protocol and persistence are those of every adapter method
(`castlib.methods.adapters.base`: ``train_on="source"``: CAST's m selected source samples;
``"target_dev"``: <= 32 labelled target examples; answer-token causal-LM loss, plus ``Omega``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...models import LanguageModel
from ..registry import register, register_preset
from .base import AdapterMethod
from .layers import AdapterHandle, apply_adapter, kaiming_uniform, weight_matrix

__all__ = ["KaSA", "KaSAAdapter", "KaSAUpdate", "KaSALinear", "truncation", "orthogonality"]


def truncation(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``r`` smallest singular components of ``weight [d_out, d_in]`` as factors
    ``(U_r S_r [d_out, r], V_r^T [r, d_in])`` (float32): ``W' = W - U_r S_r V_r^T``."""
    k = min(weight.shape)
    if not 1 <= r < k:
        raise ValueError(f"KaSA needs 1 <= r < min(d_out, d_in) = {k}, got r = {r}")
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    return (u[:, k - r :] * s[k - r :]).contiguous(), vh[k - r :].contiguous()


def orthogonality(m: torch.Tensor, side: str) -> torch.Tensor:
    """``||M^T M - I||_F^2`` (``side="columns"``, for L) or ``||M M^T - I||_F^2``
    (``side="rows"``, for R)."""
    if side == "columns":
        gram = m.T @ m
    elif side == "rows":
        gram = m @ m.T
    else:
        raise ValueError(f"side must be 'columns' or 'rows', got {side!r}")
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return ((gram - eye) ** 2).sum()


class KaSAUpdate(nn.Module):
    """The KaSA state of one linear module: trainable ``L, sigma, R`` and the frozen factors of
    the dropped singular components (buffers)."""

    def __init__(self, d_out: int, d_in: int, r: int) -> None:
        super().__init__()
        self.L = nn.Parameter(torch.zeros(d_out, r))
        self.sigma = nn.Parameter(torch.zeros(r))
        self.R = nn.Parameter(torch.zeros(r, d_in))
        self.register_buffer("trunc_us", torch.zeros(d_out, r))
        self.register_buffer("trunc_vt", torch.zeros(r, d_in))

    @property
    def r(self) -> int:
        return self.sigma.shape[0]

    @classmethod
    def build(cls, weight: torch.Tensor, r: int, generator: torch.Generator) -> KaSAUpdate:
        """From a frozen ``[d_out, d_in]`` weight: SVD truncation and the seeded initialisation."""
        d_out, d_in = weight.shape
        upd = cls(d_out, d_in, r)
        us, vt = truncation(weight, r)
        with torch.no_grad():
            upd.trunc_us.copy_(us)
            upd.trunc_vt.copy_(vt)
            upd.R.copy_(kaiming_uniform(r, d_in, generator))
            upd.sigma.copy_(torch.randn(r, generator=generator))
        return upd.to(weight.device)

    def dropped(self) -> torch.Tensor:
        """``U_r S_r V_r^T``, the component removed from the base weight."""
        return self.trunc_us @ self.trunc_vt

    def delta(self, scale: float) -> torch.Tensor:
        """``Delta W = scale * L diag(sigma) R`` as a ``[d_out, d_in]`` matrix."""
        return scale * (self.L * self.sigma) @ self.R

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """``Delta W x - U_r S_r V_r^T x`` for ``x [..., d_in]`` (float32 math)."""
        xf = x.to(self.L.dtype)
        drop = (xf @ self.trunc_vt.T) @ self.trunc_us.T
        upd = ((xf @ self.R.T) * self.sigma) @ self.L.T
        return scale * upd - drop

    def regularizer(self, beta: float, gamma: float, sigma_l2: float) -> torch.Tensor:
        out = beta * orthogonality(self.L, "columns") + gamma * orthogonality(self.R, "rows")
        return out + sigma_l2 * (self.sigma**2).sum()


class KaSALinear(nn.Module):
    """The wrapper that replaces a target module: ``base(x) + update(x)`` (see module doc)."""

    def __init__(self, base: nn.Module, update: KaSAUpdate, scale: float) -> None:
        super().__init__()
        self.base = base
        self.update = update
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        return out + self.update(x, self.scale).to(out.dtype)


def _key(name: str) -> str:
    return name.replace(".", "/")


class KaSAAdapter(nn.Module):
    """KaSA updates for a set of named linear modules of one model.

    Args (of `build`): the model, the module names (`target_modules`), the rank ``r``, the LoRA
    scale numerator ``alpha`` (``Delta W`` is scaled by ``alpha / r``), the regulariser weights and
    the seed of the initialisation.
    """

    def __init__(
        self,
        updates: dict[str, KaSAUpdate],
        alpha: float,
        beta: float = 1e-3,
        gamma: float = 1e-3,
        sigma_l2: float = 1e-4,
    ) -> None:
        super().__init__()
        if not updates:
            raise ValueError("a KaSA adapter needs at least one target module")
        self.names = list(updates)
        self.updates = nn.ModuleDict({_key(n): u for n, u in updates.items()})
        r = {u.r for u in updates.values()}
        if len(r) != 1:
            raise ValueError(f"all KaSA updates need the same rank, got {sorted(r)}")
        self.r = r.pop()
        self.alpha = float(alpha)
        self.beta, self.gamma, self.sigma_l2 = float(beta), float(gamma), float(sigma_l2)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def build(
        cls,
        model: nn.Module,
        names: Sequence[str],
        r: int = 8,
        alpha: float = 16.0,
        beta: float = 1e-3,
        gamma: float = 1e-3,
        sigma_l2: float = 1e-4,
        seed: int = 0,
    ) -> KaSAAdapter:
        gen = torch.Generator().manual_seed(seed)
        updates = {
            name: KaSAUpdate.build(weight_matrix(model.get_submodule(name)), r, gen)
            for name in names
        }
        return cls(updates, alpha, beta, gamma, sigma_l2)

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], names: Sequence[str], **kwargs: Any
    ) -> KaSAAdapter:
        """Rebuild from `state_tensors` (e.g. loaded from safetensors)."""
        updates = {}
        for name in names:
            d_out, r = tensors[f"{name}.L"].shape
            upd = KaSAUpdate(d_out, tensors[f"{name}.R"].shape[1], r)
            with torch.no_grad():
                for attr in ("L", "sigma", "R", "trunc_us", "trunc_vt"):
                    getattr(upd, attr).copy_(tensors[f"{name}.{attr}"])
            updates[name] = upd
        return cls(updates, **kwargs)

    def update(self, name: str) -> KaSAUpdate:
        return self.updates[_key(name)]  # type: ignore[return-value]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``{"<module>.<L|sigma|R|trunc_us|trunc_vt>": tensor}``, contiguous CPU copies."""
        out = {}
        for name in self.names:
            upd = self.update(name)
            for attr in ("L", "sigma", "R", "trunc_us", "trunc_vt"):
                out[f"{name}.{attr}"] = getattr(upd, attr).detach().cpu().contiguous().clone()
        return out

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """Per module, the change of the effective weight: ``Delta W - U_r S_r V_r^T``."""
        with torch.no_grad():
            return {
                n: self.update(n).delta(self.scale) - self.update(n).dropped() for n in self.names
            }

    def regularizer(self) -> torch.Tensor:
        return sum(
            (self.update(n).regularizer(self.beta, self.gamma, self.sigma_l2) for n in self.names),
            torch.zeros(()),
        )

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        upd = self.update(name)
        w = weight_matrix(module)
        if tuple(w.shape) != (upd.L.shape[0], upd.R.shape[1]):
            raise ValueError(
                f"KaSA update for {name} is {upd.L.shape[0]}x{upd.R.shape[1]}, the module's weight "
                f"is {tuple(w.shape)}: the adapter was made on another model"
            )
        if upd.L.device != w.device:
            upd.to(w.device)
        return KaSALinear(module, upd, self.scale)


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
