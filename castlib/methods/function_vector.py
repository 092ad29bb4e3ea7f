"""Function vectors (Todd, Li, Sharma, Mueller, Wallace & Bau, ICLR 2024).

Head outputs. In block l, the attention's output projection (``o_proj`` / ``c_proj`` /
``dense`` / ``out_proj``) receives the concatenated head outputs ``z_l = [z_{l,1}; ...; z_{l,H}]``
(``H`` heads of width ``d``); they are read with a forward pre-hook on that projection, at the last
token of the prompt.

1. Mean head activations: over ``n_prompts`` source few-shot prompts ``Pk(x; D)`` (k source
   demonstrations, seeded), ``a_{l,j} = mean_p z_{l,j}(p)``.
2. Causal indirect effect: ``n_corrupted`` corrupted few-shot prompts ``p~`` whose demonstrations
   carry a wrong label (each demo's answer replaced by a different label, drawn at random, so the
   input-label mapping is broken), with the query's gold answer ``y`` (its first token). For every
   scored head (l, j), ``z_{l,j}`` at the last token of ``p~`` is replaced by ``a_{l,j}`` and

       CIE_{l,j}(p~) = P(y | p~, z_{l,j} := a_{l,j}) - P(y | p~),   AIE_{l,j} = mean_{p~} CIE.

   Batched and cached: each corrupted prompt but its last token runs once and its key/value
   cache is kept; every batch of ``heads_batch`` patched heads then runs only the last token
   against a batched copy of that cache (patching the last token cannot change earlier ones).
3. The function vector of the top-K heads by AIE,

       FV_K = sum_{(l, j) in top-K} W^O_l [0; ...; a_{l,j}; ...; 0]
            = sum_l (o_proj_l(z~_l) - o_proj_l(0)),

   ``z~_l`` being zero except the chosen heads' slices (the projection's bias is removed).
4. Steering: the target runs zero-shot and ``alpha * FV_K`` is added to the output of block l*
   at the last prompt token (`castlib.steer`). (K, l*, alpha) are chosen together by the spec's
   tuning protocols on the shared budget (`castlib.methods.tuning`): the slots are (K, l*) for
   K in ``top_heads`` and l* among the candidate layers, the ``n_configs - 1`` steered
   configurations are dealt over them as alphas geometric over ``alpha_range`` = (0.5, 1.0)
   (2 K x 5 layers x 2 alphas by default), plus the unsteered model: as many configurations
   as CAST. The record keeps every head's AIE, the chosen heads and the grid.

What follows the paper: mean head outputs over clean ICL prompts, heads ranked by their
average indirect effect on prompts with broken input-label mapping, the FV as the sum of the
top heads' outputs through W^O, added to the residual stream at one layer, last token.

What differs, and why:
- Cross-task: the FV is built from *source*-task prompts and applied to a *target* task (the
  paper applies a task's FV to the same task): the transfer being compared.
- Heads are ranked on the source tasks at hand, with 16 clean and 8 corrupted prompts (CPU
  affordable), not averaged over the paper's many tasks and hundreds of prompts.
- Corruption replaces each demonstration's answer by a different label (always wrong) rather
  than shuffling the labels (which may leave some right).
- The paper fixes K (10 for GPT-J) and alpha = 1 and sweeps the layer; here K, the layer and
  alpha share the budget every steering method gets (alpha = 1 is always in the grid), so FV
  searches as many configurations as CAST, and may keep the unsteered model.

CPU-affordable defaults: 16 clean and 8 corrupted prompts of 4 demonstrations, every head of
every layer scored (``head_layers`` limits the layers), K in (5, 10).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..architectures import ATTENTION_NAMES, MLP_NAMES, OUT_PROJ_NAMES
from ..hooks import HookGroup
from ..models import LanguageModel
from ..padding import encode, iter_batches
from ..progress import shown
from ..prompts import k_shot
from ..scoring.kv_cache import cache_kwargs, expand_cache, new_cache, returned_cache
from ..scoring.logprobs import answer_token_ids
from ..tasks import Example, Task
from ..vectors import SteeringVector
from .registry import register
from .steering import SteeringMethod, draw_icl_item, make_vector
from .tuning import row_keys

__all__ = [
    "FunctionVector",
    "attention_module",
    "mlp_module",
    "out_projection",
    "head_layout",
    "mean_head_outputs",
    "head_effects",
    "function_vector",
    "corrupt",
]


def _named_child(parent: nn.Module, names: Sequence[str], what: str) -> nn.Module:
    """The first attribute of ``parent`` among ``names`` that is a module."""
    for name in names:
        mod = getattr(parent, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ValueError(f"no {what} ({names}) in {type(parent).__name__}")


def attention_module(block: nn.Module) -> nn.Module:
    """The self-attention submodule of a decoder block."""
    return _named_child(block, ATTENTION_NAMES, "attention submodule")


def mlp_module(block: nn.Module) -> nn.Module:
    """The MLP of a decoder block (OPT has none: its second feed-forward linear ``fc2``)."""
    return _named_child(block, MLP_NAMES, "MLP submodule")


def out_projection(block: nn.Module) -> nn.Module:
    """The attention output projection, whose input is the concatenated head outputs."""
    return _named_child(attention_module(block), OUT_PROJ_NAMES, "output projection")


def head_layout(lm: LanguageModel) -> tuple[int, int]:
    """``(n_heads, head_dim)`` of the output projections' input."""
    config = lm.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not isinstance(n_heads, int):
        raise ValueError(f"cannot read the number of attention heads of {lm.name}")
    proj = out_projection(lm.blocks[0])
    width = proj.in_features if isinstance(proj, nn.Linear) else proj.weight.shape[0]
    if width % n_heads:
        raise ValueError(f"output projection width {width} is not a multiple of {n_heads} heads")
    return n_heads, width // n_heads


def corrupt(task: Task, demos: Sequence[Example], rng: random.Random) -> list[Example]:
    """The demonstrations with each answer replaced by a different label (drawn at random)."""
    out = []
    for d in demos:
        wrong = [i for i in range(len(task.label_space(d))) if i != d.label]
        out.append(dataclasses.replace(d, label=rng.choice(wrong)))
    return out


def _check_heads_input(x: torch.Tensor) -> None:
    if x.ndim != 3:
        raise RuntimeError(
            f"the attention output projection received a {x.ndim}-d input; expected the "
            "concatenated head outputs [batch, seq, heads * head_dim]"
        )


def mean_head_outputs(
    lm: LanguageModel, prompts: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """``a [n_layers, n_heads, head_dim]``: mean head outputs at the last token of ``prompts``."""
    n_heads, head_dim = head_layout(lm)
    total = torch.zeros(lm.n_layers, n_heads * head_dim, dtype=torch.float64)

    def make_hook(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            _check_heads_input(args[0])
            total[layer] += args[0][:, -1].double().sum(0).cpu()  # left padding: last column

        return hook

    ids = encode(lm.tokenizer, prompts)
    with HookGroup() as hooks, torch.inference_mode():
        for layer, block in enumerate(lm.blocks):
            hooks.add(out_projection(block).register_forward_pre_hook(make_hook(layer)))
        for batch in iter_batches(ids, batch_size, lm.tokenizer.pad_token_id, "left", lm.device):
            lm.base(**batch.model_inputs(), use_cache=False)
    return (total / len(prompts)).float().view(lm.n_layers, n_heads, head_dim)


class _Patcher:
    """Which (layer, head) each batch row patches with its mean output at the last token
    (``rows``, one per row); `install` adds its pre-hooks on the output projections to a
    `castlib.hooks.HookGroup`, which removes them."""

    def __init__(self, means: torch.Tensor) -> None:
        self.means = means
        self.rows: list[tuple[int, int]] = []

    def install(self, lm: LanguageModel, hooks: HookGroup) -> None:
        for layer, block in enumerate(lm.blocks):
            hooks.add(out_projection(block).register_forward_pre_hook(self._hook(layer)))

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            hits = [(b, h) for b, (lay, h) in enumerate(self.rows) if lay == layer]
            if not hits:
                return None
            _check_heads_input(args[0])
            x = args[0].clone()
            d = self.means.shape[-1]
            for b, h in hits:
                x[b, -1, h * d : (h + 1) * d] = self.means[layer, h].to(x.dtype)
            return (x, *args[1:])

        return hook


def _last_token_probs(
    lm: LanguageModel, token: int, n_pre: int, cache: Any, n: int, gold: int
) -> torch.Tensor:
    """P(gold) after ``token`` run on ``n`` copies of a cached prefix of ``n_pre`` tokens."""
    logits = lm.model(
        input_ids=torch.full((n, 1), token, device=lm.device),
        attention_mask=torch.ones((n, n_pre + 1), dtype=torch.long, device=lm.device),
        position_ids=torch.full((n, 1), n_pre, device=lm.device),
        **cache_kwargs(lm, expand_cache(cache, n)),
        use_cache=True,
        logits_to_keep=1,
    ).logits
    return torch.softmax(logits[:, -1].float(), dim=-1)[:, gold].cpu()


def head_effects(
    lm: LanguageModel,
    prompts: Sequence[str],
    gold: Sequence[int],
    means: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    heads_batch: int = 32,
    progress: bool | None = None,
) -> torch.Tensor:
    """``CIE [n_prompts, n_heads]``: gain in the probability of token ``gold[i]`` at the last
    position of ``prompts[i]`` when head ``heads[j] = (layer, head)`` is patched with its mean
    output ``means[layer, head]`` (cached prefix, batched heads; see the module docstring)."""
    ids = encode(lm.tokenizer, prompts)
    out = torch.zeros(len(prompts), len(heads))
    patcher = _Patcher(means.to(lm.device))
    chunks = [list(heads[i : i + heads_batch]) for i in range(0, len(heads), heads_batch)]
    with HookGroup() as hooks, torch.inference_mode():
        patcher.install(lm, hooks)
        for i, row in enumerate(
            tqdm(ids, desc="head effects", disable=not shown(progress, len(ids)))
        ):
            if len(row) < 2:
                raise ValueError("a corrupted prompt needs at least two tokens")
            prefix = torch.as_tensor([row[:-1]], device=lm.device)
            n_pre = prefix.shape[1]
            patcher.rows = []
            cache = returned_cache(
                lm.model(
                    input_ids=prefix,
                    attention_mask=torch.ones_like(prefix),
                    position_ids=torch.arange(n_pre, device=lm.device)[None],
                    **cache_kwargs(lm, new_cache(lm)),
                    use_cache=True,
                    logits_to_keep=1,
                )
            )

            base = _last_token_probs(lm, row[-1], n_pre, cache, 1, gold[i])[0]
            start = 0
            for chunk in chunks:
                patcher.rows = chunk
                probs = _last_token_probs(lm, row[-1], n_pre, cache, len(chunk), gold[i])
                out[i, start : start + len(chunk)] = probs - base
                start += len(chunk)
            patcher.rows = []
    return out


def function_vector(
    lm: LanguageModel, means: torch.Tensor, heads: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``sum_l (o_proj_l(z~_l) - o_proj_l(0))`` with ``z~_l`` zero except the chosen heads'
    mean outputs: a ``[hidden]`` float32 vector."""
    d = means.shape[-1]
    fv = torch.zeros(lm.hidden_size, dtype=torch.float32)
    layers = sorted({layer for layer, _ in heads})
    with torch.no_grad():
        for layer in layers:
            proj = out_projection(lm.blocks[layer])
            weight = next(proj.parameters())
            z = torch.zeros(1, means.shape[1] * d, dtype=weight.dtype, device=weight.device)
            for lay, h in heads:
                if lay == layer:
                    z[0, h * d : (h + 1) * d] = means[layer, h].to(weight.dtype)
            fv += (proj(z) - proj(torch.zeros_like(z)))[0].float().cpu()
    return fv


@register
class FunctionVector(SteeringMethod):
    """Function vectors (see the module docstring)."""

    name = "function_vector"

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alpha_range: tuple[float, ...] = (0.5, 1.0)
        top_heads: tuple[int, ...] = (5, 10)  # the K grid
        k: int = 4  # demonstrations per prompt
        n_prompts: int = 16  # clean prompts (mean head outputs)
        n_corrupted: int = 8  # corrupted prompts (indirect effects)
        head_layers: tuple[int, ...] | None = None  # layers whose heads are scored; None: all
        heads_batch: int = 32

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        if not p.top_heads or min(p.top_heads) < 1:
            raise ValueError("top_heads must be a non-empty grid of K >= 1")
        if p.k < 1 or p.n_prompts < 1 or p.n_corrupted < 1 or p.heads_batch < 1:
            raise ValueError("k, n_prompts, n_corrupted and heads_batch must be >= 1")

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        rows = self.tuning_rows(sources, target, seed)
        held = row_keys(rows)

        clean = []
        for i in range(p.n_prompts):
            task, query, demos = draw_icl_item(sources, i, p.k, rng, held)
            clean.append(k_shot(task, query, demos))
        corrupted, gold = [], []
        for i in range(p.n_corrupted):
            task, query, demos = draw_icl_item(sources, i, p.k, rng, held)
            corrupted.append(k_shot(task, query, corrupt(task, demos, rng)))
            gold.append(answer_token_ids(lm.tokenizer, [task.answer(query)])[0][0])

        means = mean_head_outputs(lm, clean, p.batch_size)
        n_heads = means.shape[1]
        layers = lm.check_layers(list(p.head_layers) if p.head_layers else None)
        heads = [(layer, h) for layer in layers for h in range(n_heads)]
        aie = head_effects(lm, corrupted, gold, means, heads, p.heads_batch).mean(0)
        ranked = sorted(range(len(heads)), key=lambda j: (-float(aie[j]), j))

        self._candidates: dict[int, tuple[SteeringVector, list[tuple[int, int]], float]] = {}
        for top in sorted({min(k, len(heads)) for k in p.top_heads}):
            chosen = [heads[j] for j in ranked[:top]]
            fv = function_vector(lm, means, chosen)
            vector = make_vector(
                lm, fv.expand(lm.n_layers, -1).clone(), self.name, self._vector_params(top)
            )
            self._candidates[top] = (vector, chosen, float(fv.norm()))
        self.info["head_aie"] = {
            f"{lay}.{h}": round(float(a), 8) for (lay, h), a in zip(heads, aie, strict=True)
        }
        slots = [(top, layer) for top in self._candidates for layer in self.candidate_layers(lm)]
        try:
            self.tune(lm, rows, slots)
        finally:
            del self._candidates

    def slot_steering(
        self, lm: LanguageModel, slot: Any, alpha: float
    ) -> AbstractContextManager[Any]:
        top, layer = slot
        return self.steering(lm, layer, alpha, vector=self._candidates[top][0])

    def slot_fields(self, slot: Any) -> dict[str, Any]:
        top, layer = (None, None) if slot is None else slot
        return {"top_heads": top, "layer": layer}

    def adopt(self, lm: LanguageModel, slot: Any, alpha: float) -> None:
        """The chosen K's vector; the unsteered model keeps the smallest K's vector (saved,
        never applied) and records ``top_heads=None``, no heads."""
        super().adopt(lm, slot, alpha)
        top = min(self._candidates) if slot is None else slot[0]
        self.vector, chosen, norm = self._candidates[top]
        self.info.update(
            heads=[] if slot is None else [list(h) for h in chosen],
            fv_norm=None if slot is None else norm,
        )

    def _vector_params(self, top: int) -> dict[str, Any]:
        p = dataclasses.asdict(self.params)
        p.pop("data_dir", None)
        return {**p, "top_heads": top}
