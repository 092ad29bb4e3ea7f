"""Adapters on frozen linear layers: KaSA, reversible module swapping, and the training loop
shared by the parameter-updating baselines (`castlib.methods.lora`, `castlib.methods.kasa`).

KaSA (Wang et al., "KaSA: Knowledge-Aware Singular-Value Adaptation of Large Language Models",
ICLR 2025, arXiv:2412.06071). For a frozen linear map ``y = W x + b`` with
``W in R^{d_out x d_in}`` and SVD ``W = U S V^T = sum_i s_i u_i v_i^T``
(``s_1 >= ... >= s_k``, ``k = min(d_out, d_in)``):

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

Non-destructive: while training, ``W'`` is never written into the model. The wrapper computes
``W' x + b = base(x) - (U_r S_r)(V_r^T x)`` from the stored factors of the dropped component
(``U_r S_r`` of shape ``[d_out, r]``, ``V_r^T`` of shape ``[r, d_in]``; buffers, saved with the
adapter), so the original module, its weights and its hooks are untouched.

Module swapping: `target_modules` finds the modules to adapt by the last component of their
name (default `DEFAULT_TARGETS`, from `castlib.architectures`: ``q_proj``/``v_proj`` on
Llama-like families and OPT, the fused ``c_attn`` of GPT-2, ``query_key_value`` of
GPT-NeoX/Falcon, ``qkv_proj`` of Phi-3, ``Wqkv`` of MPT), inside the
decoder blocks only. ``apply_adapter(model, adapter)`` replaces each target by a wrapper, freezes
every parameter of the model (so gradients reach only the adapter) and returns a handle whose
``remove()`` puts the original module objects back and restores every ``requires_grad`` flag:
the model is then exactly as found (bit-identical outputs).

Merged inference (`merged_weights`): for evaluation an adapter can instead be folded into the
weights, ``W <- W + Delta_eff`` (LoRA: ``Delta_eff = (alpha / r) B A``; KaSA:
``Delta_eff = (alpha / r) L diag(sigma) R - U_r S_r V_r^T``), computed in float32 and added in the
weight's dtype, so inference costs exactly a plain forward pass; on exit every weight is copied
back from a saved clone (bit-identical, also after an exception).

Training (`train_adapter`, shared by ``lora`` and ``kasa``): causal-LM loss on the answer tokens
only. Each example is the zero-shot prompt of its own task ``P0(x)`` followed by the scored
continuation ``" " + answer`` (tokenised exactly as `castlib.evaluate` scores it); the loss is the
mean negative log-likelihood over the answer tokens of the batch, plus the adapter's regulariser.
Adam, a fixed number of steps, batches drawn from seeded epoch permutations; the model stays in
eval mode (no dropout), so training is deterministic per seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import LORA_TARGETS
from .models import LanguageModel
from .padding import encode
from .prompts import zero_shot
from .scoring.logprobs import answer_token_ids, continuation_log_probs
from .tasks import Example, Task

__all__ = [
    "DEFAULT_TARGETS",
    "target_modules",
    "weight_matrix",
    "kaiming_uniform",
    "truncation",
    "orthogonality",
    "KaSAUpdate",
    "KaSALinear",
    "KaSAAdapter",
    "AdapterHandle",
    "apply_adapter",
    "merged_weights",
    "answer_rows",
    "answer_nll",
    "freeze",
    "train_adapter",
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
# KaSA math
# ----------------------------------------------------------------------------------------------


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


def apply_adapter(model: nn.Module, adapter: KaSAAdapter) -> AdapterHandle:
    """Swap every target module of ``model`` for its KaSA wrapper (model frozen, adapter
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


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def answer_rows(
    lm: LanguageModel, items: Sequence[tuple[Task, Example]]
) -> list[tuple[list[int], int]]:
    """``(prompt ids + answer ids, number of answer tokens)`` per (task, example): the zero-shot
    prompt of the example's own task, then its gold continuation ``" " + answer``."""
    prompts = encode(lm.tokenizer, [zero_shot(task, ex) for task, ex in items])
    answers = answer_token_ids(lm.tokenizer, [task.answer(ex) for task, ex in items])
    return [(p + a, len(a)) for p, a in zip(prompts, answers, strict=True)]


def answer_nll(lm: LanguageModel, rows: Sequence[tuple[list[int], int]]) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens of ``rows`` (one left-padded batch)."""
    conts = [c for _, c in rows]
    total = -continuation_log_probs(lm, [r for r, _ in rows], conts).sum()
    return total / sum(conts)


def train_adapter(
    lm: LanguageModel,
    handle: AdapterHandle,
    items: Sequence[tuple[Task, Example]],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool | None = None,
    desc: str = "training",
) -> list[float]:
    """Train the attached adapter's parameters on the answer tokens of ``items`` (see the
    module docstring); returns the loss of every step."""
    if not items:
        raise ValueError("no training examples")
    if steps < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"need steps >= 0, batch_size >= 1, lr > 0 (got {steps}, {batch_size}, {lr})"
        )
    rows = answer_rows(lm, items)
    params = handle.parameters()
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, len(rows))
    order: list[int] = []
    losses: list[float] = []
    with torch.enable_grad():
        for _ in tqdm(
            range(steps),
            desc=desc,
            disable=None if progress is None else not progress,
            leave=False,
        ):
            if len(order) < bs:
                order = torch.randperm(len(rows), generator=gen).tolist()
            idx, order = order[:bs], order[bs:]
            loss = answer_nll(lm, [rows[i] for i in idx])
            reg = handle.regularizer()
            total = loss if reg is None else loss + reg.to(loss.device)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(total.detach()))
    for p in params:
        p.grad = None
    return losses
