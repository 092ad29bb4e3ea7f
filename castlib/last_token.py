"""Steering sweeps at the cost of one token: last-position steering against cached prefixes.

With ``positions="last"`` steering (`castlib.steer`), block l is changed only at the last prompt
token T-1 (and, for multi-token answers, at the answer tokens that follow it). Attention is
causal, so every position before T-1 computes exactly what the unsteered model computes. For a
prompt ``p = p[:T-1] + p[T-1]`` and any steering configuration s (vector, layers, alpha):

    cache      = KV(p[:T-1])                                   (unsteered, once per prompt)
    log P_s(" a" | p) = sum_t log P_s(a_t | p[T-1], a_<t ; cache)   (s active on every new token)

so scoring G configurations costs one prefix pass plus G passes of ``1 + len(answer)`` tokens,
instead of G full passes (`castlib.evaluate.score_prompts`). The prompts of a chunk are
left-padded as the full path pads them, the last prompt token of every row then sits in the same
column, and the new tokens continue each row's position ids; Gemma's sliding-window layers keep
the last ``window - 1`` prefix columns, which is all the new tokens may attend to.
The steering hooks see the new tokens as a decode step (a non-empty cache) and steer all of
them: the last prompt token and every answer token, exactly the positions that the full path
steers (`castlib.steer.override_positions`). Scores agree with the full path up to float
rounding (<= 1e-4 in float32 on the tiny test models), predictions are identical.

Not exact, and so refused: ``positions="all"`` steering (it changes the prefix too), and any
configuration that installs hooks other than castlib's last-position steering. Memory: one
chunk of ``batch_size`` prefix caches at a time; configurations run inside the chunk loop, and
each chunk's cache is freed before the next is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from .logprobs import checked_inputs
from .models import LanguageModel
from .padding import encode, iter_batches, position_ids_from_mask
from .prefix_cache import cache_kwargs, new_cache, returned_cache
from .steer import active_steer_hooks
from .validate import check_positive_int

__all__ = ["Config", "sweep_scores", "fork_cache", "cacheable_prompts", "SCORING_CACHED"]

#: A steering configuration: a zero-argument callable returning a context manager (e.g.
#: ``lambda: steer(lm, v, alpha=1, layers=[6])``), or None for the unsteered model.
Config = Callable[[], AbstractContextManager[Any]] | None

#: ``record["scoring"]`` of the cached path (the full path is ``"full"``).
SCORING_CACHED = "last_token_cached"


def fork_cache(cache: object) -> object:
    """A copy of a transformers cache whose layers share the stored tensors.

    A forward pass on the copy appends to the copy's layers (``torch.cat`` rebinds them), so
    ``cache`` itself is never changed and can be reused for the next configuration.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if layers is None or any(
        type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers
    ):
        return copy.deepcopy(cache)
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in layers]
    return out


def cacheable_prompts(lm: LanguageModel, prompts: Sequence[str]) -> bool:
    """Whether every prompt has at least two tokens (a non-empty prefix before the last)."""
    return all(len(row) >= 2 for row in encode(lm.tokenizer, prompts))


def _foreign_hooks(lm: LanguageModel) -> int:
    """Forward hooks on the blocks that are not castlib steering hooks. A safety check only:
    castlib tracks its own interventions in ``lm.interventions``, but a hook installed by
    other code can be seen only in torch's hook dicts, and it would make the cached prefix
    (run without it) disagree with the full path."""
    total = sum(len(block._forward_hooks) for block in lm.blocks)
    return total - len(active_steer_hooks(lm))


def _forward_new_tokens(
    lm: LanguageModel,
    cache: object,
    prefix_mask: torch.Tensor,
    new_ids: torch.Tensor,
    keep: int,
) -> torch.Tensor:
    """Run ``new_ids [B, n]`` after the cached left-padded prefix; logits of the last ``keep``."""
    batch, n = new_ids.shape
    mask = torch.cat([prefix_mask, prefix_mask.new_ones((batch, n))], dim=1)
    start = prefix_mask.sum(dim=1, keepdim=True)
    positions = start + torch.arange(n, device=new_ids.device)[None, :]
    out = lm.model(
        input_ids=new_ids,
        attention_mask=mask,
        position_ids=positions,
        **cache_kwargs(lm, fork_cache(cache)),
        use_cache=True,
        logits_to_keep=keep,
    )
    return out.logits


def sweep_scores(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    configs: Sequence[Config],
    batch_size: int = 16,
    progress: bool | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """Score every prompt under every steering configuration, prefixes cached.

    Args:
        lm: the model (no steering active outside this call).
        prompts: the prompts (each at least two tokens long).
        answers: the answer strings, scored as their continuation like `score_prompts` does.
        configs: steering configurations (see `Config`); each must install only castlib
            ``positions="last"`` steering hooks.
        batch_size: prompts per chunk (one chunk's prefix caches are held at a time).
        progress: show a progress bar over chunks (default: more than 4 chunks).

    Returns:
        ``([scores [n_prompts, n_answers] float32 per config], prompt token counts)``, the same
        values as `castlib.evaluate.score_prompts` inside each configuration's context.
    """
    if not configs:
        raise ValueError("configs must not be empty")
    if active_steer_hooks(lm):
        raise RuntimeError(
            "sweep_scores runs its own steering configurations; leave the outer steer context"
        )
    baseline_hooks = _foreign_hooks(lm)
    batch_size = check_positive_int(batch_size, "batch_size")
    _, answers, prompt_ids, answer_ids = checked_inputs(lm, prompts, answers)
    short = [i for i, row in enumerate(prompt_ids) if len(row) < 2]
    if short:
        raise ValueError(
            f"prompt {short[0]} has a single token: nothing to cache before the last token"
        )
    firsts = [row[0] for row in answer_ids]
    single = all(len(r) == 1 for r in answer_ids) and len(set(firsts)) == len(firsts)
    n, k = len(prompt_ids), len(answer_ids)
    outs = [torch.empty((n, k), dtype=torch.float32) for _ in configs]
    n_chunks = -(-n // batch_size)
    show = progress if progress is not None else n_chunks > 4
    cand = torch.as_tensor(firsts)
    batches = iter_batches(prompt_ids, batch_size, lm.tokenizer.pad_token_id, "left", lm.device)
    with torch.inference_mode():
        for batch in tqdm(
            batches, total=n_chunks, desc="scoring (last token)", disable=not show, leave=False
        ):
            ids, mask = batch.input_ids, batch.attention_mask
            prefix_ids, prefix_mask, last = ids[:, :-1], mask[:, :-1], ids[:, -1:]
            prefix = returned_cache(
                lm.model(
                    input_ids=prefix_ids,
                    attention_mask=prefix_mask,
                    position_ids=position_ids_from_mask(prefix_mask),
                    **cache_kwargs(lm, new_cache(lm)),
                    use_cache=True,
                    logits_to_keep=1,
                )
            )
            for out, config in zip(outs, configs, strict=True):
                with config() if config is not None else nullcontext():
                    if any(h.positions != "last" for h in active_steer_hooks(lm)):
                        raise ValueError(
                            "cached last-token scoring is exact only for positions='last' "
                            "steering; this configuration steers every position"
                        )
                    if _foreign_hooks(lm) != baseline_hooks:
                        raise ValueError(
                            "this configuration installs hooks other than castlib's "
                            "last-position steering; cached scoring cannot be shown exact for it"
                        )
                    if single:
                        logits = _forward_new_tokens(lm, prefix, prefix_mask, last, 1)
                        logp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
                        out[batch.indices] = logp[:, cand]
                        continue
                    for j, row in enumerate(answer_ids):
                        tail = torch.as_tensor([row], device=lm.device).expand(
                            len(batch.indices), -1
                        )
                        new = torch.cat([last, tail], dim=1)
                        logits = _forward_new_tokens(lm, prefix, prefix_mask, new, new.shape[1])
                        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                        targets = torch.as_tensor(row, device=lm.device)
                        picked = logp.gather(
                            2, targets[None, :, None].expand(len(batch.indices), -1, 1)
                        )
                        out[batch.indices, j] = picked.sum(dim=(1, 2)).cpu()
            del prefix
    return outs, [len(r) for r in prompt_ids]
