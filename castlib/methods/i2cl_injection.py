"""I2CL's injection sites (`castlib.methods.i2cl`, steps 2-3): the modules whose outputs are
each block's attention and MLP contributions to the residual stream, the context vectors read
there, and the hooks that replace each output by a linear combination of the context vector
and the query's own output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..hooks import HookGroup, hidden_of, with_hidden
from ..models import LanguageModel
from ..padding import encode, iter_batches
from .function_vector import attention_module, mlp_module

__all__ = ["SITES", "residual_sites", "context_vectors", "I2CLInjection"]

#: the two injection sites of a block, in the order of ``coef``'s second axis
SITES = ("attn", "mlp")


def residual_sites(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are the attention's and the MLP's residual contributions."""
    if hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm"):
        return block.post_attention_layernorm, block.post_feedforward_layernorm
    return attention_module(block), mlp_module(block)


def context_vectors(
    lm: LanguageModel, texts: list[str], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_attn, c_mlp)``, each ``[n_layers, hidden]``: mean attention and MLP outputs at the
    last token of each text (left padding, so the last column)."""
    sums = torch.zeros(2, lm.n_layers, lm.hidden_size, dtype=torch.float64)
    shape: list[int] = []  # [batch, seq] of the current forward pass

    def make_hook(kind: int, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = hidden_of(output)
            if out.ndim == 2:  # OPT runs its feed-forward on flattened [batch * seq, hidden]
                out = out.view(*shape, -1)
            sums[kind, layer] += out[:, -1].double().sum(0).cpu()

        return hook

    ids = encode(lm.tokenizer, texts)
    with HookGroup() as hooks, torch.inference_mode():
        for layer, block in enumerate(lm.blocks):
            attn, mlp = residual_sites(block)
            hooks.add(attn.register_forward_hook(make_hook(0, layer)))
            hooks.add(mlp.register_forward_hook(make_hook(1, layer)))
        for batch in iter_batches(ids, batch_size, lm.tokenizer.pad_token_id, "left", lm.device):
            shape[:] = batch.input_ids.shape
            lm.base(**batch.model_inputs(), use_cache=False)
    mean = (sums / len(texts)).float()
    return mean[0], mean[1]


class _SiteHook:
    """``o <- coef[0] * c + coef[1] * o`` (+ noise while calibrating) on one submodule."""

    def __init__(
        self,
        coef: torch.Tensor,
        context: torch.Tensor,
        noise_scale: float,
        generator: torch.Generator | None,
    ) -> None:
        self.coef = coef  # [2] view of the (possibly trainable) coefficients
        self.context = context
        self.noise_scale = noise_scale
        self.generator = generator
        self._cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        out = hidden_of(output)
        key = (out.device, out.dtype)
        ctx = self._cast.get(key)
        if ctx is None:  # the context vector in the activation's dtype and device, once
            ctx = self._cast[key] = self.context.to(device=out.device, dtype=out.dtype)
        coef = self.coef.to(device=out.device, dtype=out.dtype)
        new = coef[0] * ctx + coef[1] * out
        if self.noise_scale > 0 and self.generator is not None:
            gen = self.generator
            noise = torch.randn(new.shape, generator=gen, device=gen.device).to(new)
            new = new + noise * new.detach().norm(dim=-1, keepdim=True) * self.noise_scale
        return with_hidden(output, new)


class I2CLInjection:
    """The injection hooks on every block's attention and MLP sites (`SITES`), for
    ``coef [n_layers, 2 sites, 2 (context, query)]`` and ``context [n_layers, 2 sites, hidden]``;
    a context manager that removes them on exit, also after an exception. With
    ``noise_scale > 0`` and a ``generator``, the calibration noise is added."""

    def __init__(
        self,
        lm: LanguageModel,
        coef: torch.Tensor,
        context: torch.Tensor,
        noise_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        want = (lm.n_layers, len(SITES))
        if tuple(coef.shape) != (*want, 2) or tuple(context.shape) != (*want, lm.hidden_size):
            raise ValueError(
                f"i2cl: coefficients {tuple(coef.shape)} and context vectors "
                f"{tuple(context.shape)} do not fit {lm.name} ({lm.n_layers} layers, hidden "
                f"{lm.hidden_size}); refit the method on this model"
            )
        self.hooks = HookGroup()
        try:
            for layer, block in enumerate(lm.blocks):
                for s, module in enumerate(residual_sites(block)):
                    hook = _SiteHook(coef[layer, s], context[layer, s], noise_scale, generator)
                    self.hooks.add(module.register_forward_hook(hook))
        except BaseException:
            self.hooks.remove()
            raise

    def remove(self) -> None:
        self.hooks.remove()

    def __enter__(self) -> I2CLInjection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
