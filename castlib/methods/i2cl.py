"""I2CL: implicit in-context learning (Li, Xu, Wang, Tang & Zhang, ICLR 2025).

1. Context vectors. Each of ``n_demos`` source demonstrations (``{input block}\\nAnswer:
   {answer}``, pooled over the source tasks, seeded) runs on its own; forward hooks on every
   block's self-attention and MLP submodules read their outputs at the demonstration's last token,

       c^attn_l = mean_d attn_l(d),     c^mlp_l = mean_d mlp_l(d)       (l = 0..L-1).

   The outputs read are the attention's and the MLP's contributions to the residual stream:
   the submodules' outputs, except on the sandwich-norm families (Gemma 2/3: a block with
   ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm``), where the outputs of the
   post-attention and post-feed-forward norms are what is added to the residual (the raw
   submodule outputs there are unnormalised and far larger than the residual). OPT has no MLP
   submodule: its second feed-forward linear ``fc2`` is read.
2. Injection. The target runs zero-shot and every block's output is shifted by a linear
   combination of its layer's context vectors,

       h_l <- h_l + a_l c^attn_l + b_l c^mlp_l,

   at every position (``positions="all"``, as in the paper; ``"last"``: the last prompt token and
   every generated token), through forward hooks removed on exit.
3. Calibration. Only the 2L coefficients ``(a_l, b_l)`` are trained (initialised to
   ``init_coef``), the model frozen: Adam on the cross-entropy of the gold answer's (first) token
   at the last position of ``n_calib`` held-out source examples' zero-shot prompts (their own
   task's prompt), ``steps`` steps of ``train_batch_size`` examples from seeded epoch
   permutations; deterministic per seed. No target label and no target test row is read.

At evaluation the fitted shift ``v_l = a_l c^attn_l + b_l c^mlp_l`` is a `SteeringVector` over all
layers, applied with `castlib.steer` (``alpha = 1``), which is the same hook math.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..hooks import HookGroup, hidden_of, with_hidden
from ..logprobs import answer_token_ids
from ..models import LanguageModel
from ..padding import encode, iter_batches, pad, position_ids_from_mask
from ..prompts import demonstration, zero_shot
from ..steer import steer
from ..tasks import Example, Task
from .base import Method
from .function_vector import attention_module, mlp_module
from .registry import register
from .steering import make_vector

__all__ = ["I2CL", "context_vectors", "residual_sites"]

CONTEXT_FILE = "context.safetensors"


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


class _Injection:
    """Differentiable forward hooks ``h_l <- h_l + coef[l, 0] c_attn[l] + coef[l, 1] c_mlp[l]``
    (all positions, or the last column of a left-padded batch)."""

    def __init__(
        self,
        lm: LanguageModel,
        coef: torch.Tensor,
        c_attn: torch.Tensor,
        c_mlp: torch.Tensor,
        positions: str,
    ) -> None:
        self.hooks = HookGroup()
        ctx = torch.stack([c_attn, c_mlp], dim=1).to(lm.device)  # [L, 2, hidden]
        for layer, block in enumerate(lm.blocks):
            self.hooks.add(block.register_forward_hook(self._hook(coef, ctx, layer, positions)))

    @staticmethod
    def _hook(coef: torch.Tensor, ctx: torch.Tensor, layer: int, positions: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = hidden_of(output)
            shift = (coef[layer, :, None] * ctx[layer]).sum(0).to(hidden.dtype)
            if positions == "all":
                return with_hidden(output, hidden + shift)
            mask = torch.zeros(hidden.shape[1], 1, dtype=hidden.dtype, device=hidden.device)
            mask[-1] = 1
            return with_hidden(output, hidden + mask * shift)

        return hook

    def __enter__(self) -> _Injection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.remove()


@register
class I2CL(Method):
    """I2CL (see the module docstring)."""

    name = "i2cl"
    needs_vector = True

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        n_demos: int = 16
        n_calib: int = 32
        steps: int = 40
        lr: float = 1e-2
        train_batch_size: int = 8
        init_coef: float = 0.1
        positions: str = "all"
        progress: bool | None = None  # tqdm bar (None: when stderr is a terminal)

    def check_params(self) -> None:
        p = self.params
        if p.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {p.positions!r}")
        if p.n_demos < 1 or p.n_calib < 1 or p.train_batch_size < 1 or p.steps < 0:
            raise ValueError("need n_demos, n_calib, train_batch_size >= 1 and steps >= 0")
        if p.lr <= 0:
            raise ValueError("lr must be > 0")

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        demos: list[tuple[Task, Example]] = []
        calib: list[tuple[Task, Example]] = []
        for i, task in enumerate(sources):
            n_d = p.n_demos // len(sources) + (i < p.n_demos % len(sources))
            n_c = p.n_calib // len(sources) + (i < p.n_calib % len(sources))
            pool = list(task.train)
            if len(pool) < n_d + n_c or n_d + n_c == 0:
                raise ValueError(
                    f"source task {task.name} has {len(pool)} train examples, "
                    f"{n_d} demonstrations + {n_c} calibration examples needed"
                )
            picks = rng.sample(pool, n_d + n_c)
            demos += [(task, ex) for ex in picks[:n_d]]
            calib += [(task, ex) for ex in picks[n_d:]]
        texts = [demonstration(task, ex) for task, ex in demos]
        self.c_attn, self.c_mlp = context_vectors(lm, texts, p.batch_size)
        coef, losses = self._calibrate(lm, calib, seed)
        self.coef = coef
        self.vector = make_vector(lm, self._shift(), self.name, self._vector_params())
        self.info.update(
            layer="all",
            alpha=1.0,
            trainable_params=int(coef.numel()),
            selected_ids=[f"{t.name}:{ex.id}" for t, ex in demos],
            calib_ids=[f"{t.name}:{ex.id}" for t, ex in calib],
            coefficients=[[round(float(x), 8) for x in row] for row in coef],
            calib_loss_first=losses[0] if losses else None,
            calib_loss_last=losses[-1] if losses else None,
        )

    def _calibrate(
        self, lm: LanguageModel, calib: list[tuple[Task, Example]], seed: int
    ) -> tuple[torch.Tensor, list[float]]:
        p = self.params
        prompts = encode(lm.tokenizer, [zero_shot(task, ex) for task, ex in calib])
        gold = [answer_token_ids(lm.tokenizer, [t.answer(ex)])[0][0] for t, ex in calib]
        coef = torch.full((lm.n_layers, 2), float(p.init_coef), device=lm.device)
        coef.requires_grad_(True)
        opt = torch.optim.Adam([coef], lr=p.lr)
        gen = torch.Generator().manual_seed(seed)
        bs = min(p.train_batch_size, len(prompts))
        order: list[int] = []
        losses: list[float] = []
        show = None if p.progress is None else not p.progress
        with _Injection(lm, coef, self.c_attn, self.c_mlp, p.positions), torch.enable_grad():
            for _ in tqdm(range(p.steps), desc=self.name, disable=show, leave=False):
                if len(order) < bs:
                    order = torch.randperm(len(prompts), generator=gen).tolist()
                idx, order = order[:bs], order[bs:]
                ids, mask = pad([prompts[i] for i in idx], lm.tokenizer.pad_token_id, "left")
                ids, mask = ids.to(lm.device), mask.to(lm.device)
                logits = lm.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    use_cache=False,
                    logits_to_keep=1,
                ).logits[:, -1]
                target = torch.as_tensor([gold[i] for i in idx], device=logits.device)
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                (grad,) = torch.autograd.grad(loss, [coef])  # the model's weights get no grad
                coef.grad = grad
                opt.step()
                coef.grad = None
                losses.append(float(loss.detach()))
        return coef.detach().float().cpu(), losses

    def _shift(self) -> torch.Tensor:
        """``v_l = a_l c^attn_l + b_l c^mlp_l``: ``[n_layers, hidden]``."""
        return self.coef[:, 0:1] * self.c_attn + self.coef[:, 1:2] * self.c_mlp

    def _vector_params(self) -> dict[str, Any]:
        p = dataclasses.asdict(self.params)
        p.pop("data_dir", None)
        return p

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        return steer(lm, self.vector, alpha=1.0, positions=self.params.positions)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = super().save(folder)
        tensors = {"c_attn": self.c_attn, "c_mlp": self.c_mlp, "coef": self.coef}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / CONTEXT_FILE))
        return folder

    @classmethod
    def _restore(cls, folder: Path, doc: dict[str, Any]) -> Method:
        from safetensors.torch import load_file

        method = super()._restore(folder, doc)
        assert isinstance(method, I2CL)
        tensors = load_file(str(folder / CONTEXT_FILE))
        method.c_attn, method.c_mlp, method.coef = (
            tensors["c_attn"],
            tensors["c_mlp"],
            tensors["coef"],
        )
        return method
