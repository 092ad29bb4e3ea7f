"""Steering sweeps at the cost of one token: last-position steering against cached prefixes.

With ``positions="last"`` steering (`castlib.steer`), block l is changed only at the last prompt
token T-1 (and, for multi-token answers, at the answer tokens that follow it). Attention is
causal, so every position before T-1 computes exactly what the unsteered model computes. For a
prompt ``p = p[:T-1] + p[T-1]`` and any steering configuration s (vector, layers, alpha):

    cache      = KV(p[:T-1])                                   (unsteered, once per prompt)
    log P_s(" a" | p) = sum_t log P_s(a_t | p[T-1], a_<t ; cache)   (s active on every new token)

so scoring G configurations costs one prefix pass plus G passes of ``1 + len(answer)`` tokens,
instead of G full passes (`castlib.scoring.evaluation.score_prompts`). The prompts of a chunk are
left-padded as the full path pads them, the last prompt token of every row then sits in the same
column, and the new tokens continue each row's position ids; Gemma's sliding-window layers keep
the last ``window - 1`` prefix columns, which is all the new tokens may attend to.
The steering hooks see the new tokens as a decode step (a non-empty cache) and steer all of
them: the last prompt token and every answer token, exactly the positions that the full path
steers (`castlib.steer.override_positions`). Scores agree with the full path up to float
rounding (<= 1e-4 in float32 on the tiny test models), predictions are identical.

Two batch sizes: the prefixes are run ``batch_size`` prompts at a time (sorted by length, so
little padding), and the caches of consecutive batches are merged, left-padded to the longest,
into passes of about ``pass_size`` prompts (`castlib.scoring.kv_cache.merge_caches`). A one-token pass costs about the
same for 16 rows as for 64 (reading the weights dominates), so the marginal cost of a
configuration falls with ``pass_size`` while the prefix passes keep their small padding. Padded
key/value columns are zeros under a zero mask: they get no attention weight, exactly as pad
tokens in a natively padded batch.

Not exact, and so refused: ``positions="all"`` steering (it changes the prefix too), and any
configuration that installs hooks other than castlib's last-position steering. Memory: one
pass of ``pass_size`` prefix caches at a time; configurations run inside the pass loop, and
each pass's cache is freed before the next is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import LanguageModel
from ..padding import encode, iter_batches, position_ids_from_mask
from ..progress import shown
from ..steer import active_steer_hooks, foreign_hooks
from ..validate import check_positive_int
from .kv_cache import cache_kwargs, fork_cache, merge_caches, mergeable, new_cache, returned_cache
from .logprobs import checked_inputs, single_token_answers

__all__ = [
    "Config",
    "sweep_scores",
    "cacheable_prompts",
    "entered",
    "unsteered_hooks",
    "SCORING_CACHED",
]

#: A steering configuration: a zero-argument callable returning a context manager (e.g.
#: ``lambda: steer(lm, v, alpha=1, layers=[6])``), or None for the unsteered model.
Config = Callable[[], AbstractContextManager[Any]] | None

#: ``record["scoring"]`` of the cached path (the full path is ``"full"``).
SCORING_CACHED = "last_token_cached"


def cacheable_prompts(lm: LanguageModel, prompts: Sequence[str]) -> bool:
    """Whether every prompt has at least two tokens (a non-empty prefix before the last)."""
    return all(len(row) >= 2 for row in encode(lm.tokenizer, prompts))


def _foreign_hooks(lm: LanguageModel) -> list[str]:
    """Everything hooked into the model that is not castlib's own steering
    (`castlib.steer.foreign_hooks`: forward hooks and pre-hooks on any submodule, patched
    forwards, torch's global hooks). Any of them can make the cached prefix (run without the
    configuration) disagree with the full path, so none is allowed."""
    return foreign_hooks(lm)


def unsteered_hooks(lm: LanguageModel) -> int:
    """Refuses a model with castlib steering or any other hook already active (a hook present
    before the sweep also runs on the prefix pass, where the last token is missing); returns
    0, the number of foreign hooks `entered` allows."""
    if active_steer_hooks(lm):
        raise RuntimeError(
            "a steering sweep runs its own steering configurations; leave the outer steer context"
        )
    found = _foreign_hooks(lm)
    if found:
        raise ValueError(
            f"the model has hooks other than castlib's last-position steering ({found[:4]}); a "
            f"steering sweep caches the prompt prefix, which is exact only with nothing else "
            f"hooked in. Remove them, or score on the full path: `with config(): evaluate(...)`"
        )
    return 0


@contextmanager
def entered(lm: LanguageModel, config: Config, baseline_hooks: int) -> Iterator[None]:
    """Enter one configuration (None: the unsteered model) and check that it installs only
    castlib ``positions="last"`` steering (forward hooks on block outputs), the kind whose
    prefix is the unsteered model's; anything else is refused, naming the hooked modules."""
    with config() if config is not None else nullcontext():
        if any(h.positions != "last" for h in active_steer_hooks(lm)):
            raise ValueError(
                "a steering sweep takes only positions='last' steering (whose prompt prefix "
                "is the unsteered model's, so cached scoring is exact); this configuration "
                "steers every position"
            )
        found = _foreign_hooks(lm)
        if len(found) != baseline_hooks:
            raise ValueError(
                f"this configuration installs hooks other than castlib's last-position "
                f"steering of block outputs ({found[:4]}); a steering sweep cannot score it "
                f"exactly from a cached prefix. Score it on the full path: "
                f"`with config(): evaluate(...)`"
            )
        yield


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


def _prefix_pass(lm: LanguageModel, ids: torch.Tensor, mask: torch.Tensor) -> object:
    """The unsteered key/value cache of a left-padded batch of prefixes."""
    return returned_cache(
        lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            **cache_kwargs(lm, new_cache(lm)),
            use_cache=True,
            logits_to_keep=1,
        )
    )


def _passes(
    lm: LanguageModel, prompt_ids: Sequence[Sequence[int]], batch_size: int, pass_size: int
) -> Iterator[tuple[list[int], object, torch.Tensor, torch.Tensor]]:
    """``(row indices, prefix cache, prefix mask, last tokens [B, 1])`` per one-token pass: the
    prefixes of ``batch_size`` prompts at a time, merged into passes of >= ``pass_size`` rows
    (or of one batch when the cache type cannot be merged)."""
    pending: list[tuple[list[int], object, torch.Tensor, torch.Tensor]] = []

    def flush() -> tuple[list[int], object, torch.Tensor, torch.Tensor]:
        rows = [i for part in pending for i in part[0]]
        cache, mask = merge_caches([p[1] for p in pending], [p[2] for p in pending])
        last = torch.cat([p[3] for p in pending])
        pending.clear()
        return rows, cache, mask, last

    pad_id = lm.tokenizer.pad_token_id
    for batch in iter_batches(prompt_ids, batch_size, pad_id, "left", lm.device):
        ids, mask = batch.input_ids, batch.attention_mask
        cache = _prefix_pass(lm, ids[:, :-1], mask[:, :-1])
        if not mergeable(cache):
            if pending:
                yield flush()
            yield batch.indices, cache, mask[:, :-1], ids[:, -1:]
            continue
        pending.append((batch.indices, cache, mask[:, :-1], ids[:, -1:]))
        if sum(len(p[0]) for p in pending) >= pass_size:
            yield flush()
    if pending:
        yield flush()


def sweep_scores(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    configs: Sequence[Config],
    batch_size: int = 16,
    progress: bool | None = None,
    pass_size: int = 64,
) -> tuple[list[torch.Tensor], list[int]]:
    """Score every prompt under every steering configuration, prefixes cached.

    Args:
        lm: the model (no steering active outside this call).
        prompts: the prompts (each at least two tokens long).
        answers: the answer strings, scored as their continuation like `score_prompts` does.
        configs: steering configurations (see `Config`); each must install only castlib
            ``positions="last"`` steering hooks.
        batch_size: prompts per prefix forward pass.
        progress: show a progress bar over prompts (default: more than 4 prefix batches).
        pass_size: prompts per one-token pass (consecutive prefix batches merged, see
            `castlib.scoring.kv_cache.merge_caches`); their caches are held together.

    Returns:
        ``([scores [n_prompts, n_answers] float32 per config], prompt token counts)``, the same
        values as `castlib.scoring.evaluation.score_prompts` inside each configuration's context.
    """
    if not configs:
        raise ValueError("configs must not be empty")
    baseline_hooks = unsteered_hooks(lm)
    batch_size = check_positive_int(batch_size, "batch_size")
    pass_size = check_positive_int(pass_size, "pass_size")
    _, answers, prompt_ids, answer_ids = checked_inputs(lm, prompts, answers)
    short = [i for i, row in enumerate(prompt_ids) if len(row) < 2]
    if short:
        raise ValueError(
            f"prompt {short[0]} has a single token: nothing to cache before the last token"
        )
    firsts = [row[0] for row in answer_ids]
    single = single_token_answers(answer_ids)
    n, k = len(prompt_ids), len(answer_ids)
    outs = [torch.empty((n, k), dtype=torch.float32) for _ in configs]
    show = shown(progress, -(-n // batch_size))
    cand = torch.as_tensor(firsts)
    bar = tqdm(total=n, desc="scoring (last token)", disable=not show, leave=False)
    with torch.inference_mode(), bar:
        for rows, prefix, prefix_mask, last in _passes(lm, prompt_ids, batch_size, pass_size):
            for out, config in zip(outs, configs, strict=True):
                with entered(lm, config, baseline_hooks):
                    if single:
                        logits = _forward_new_tokens(lm, prefix, prefix_mask, last, 1)
                        logp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
                        out[rows] = logp[:, cand]
                        continue
                    for j, row in enumerate(answer_ids):
                        tail = torch.as_tensor([row], device=lm.device).expand(len(rows), -1)
                        new = torch.cat([last, tail], dim=1)
                        logits = _forward_new_tokens(lm, prefix, prefix_mask, new, new.shape[1])
                        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                        targets = torch.as_tensor(row, device=lm.device)
                        picked = logp.gather(2, targets[None, :, None].expand(len(rows), -1, 1))
                        out[rows, j] = picked.sum(dim=(1, 2)).cpu()
            bar.update(len(rows))
            del prefix
    return outs, [len(r) for r in prompt_ids]
