"""Prefix-cached scoring: the strongest (cheapest) in-context-learning baseline.

When every prompt starts with the same demonstration prefix (cross-task k-shot: the source
instruction, the demonstrations and a blank line, then the target instruction and the query),
the prefix is run once and its key/value cache kept; each query then only runs its *suffix*
(target instruction + query, plus the answer tokens for multi-token answers) against a batched
copy of that cache. The split is the longest shared prefix ending in a blank line, so when all
queries share the target instruction too (one target task), it is part of the cached prefix:

    prompt_i = prefix + suffix_i            (split at a "\\n\\n", see `split_shared_prefix`)
    cache    = KV(prefix)                   (one forward pass, batch 1, never mutated)
    logits_i = model(suffix_i | cache)      (suffixes right-padded, batched)

Batching after a cached prefix (why it is done this way):
    * Left padding cannot be used: pad tokens would sit between the prefix and the suffix. The
      suffixes are right-padded instead, with an attention mask that covers prefix + suffix
      (``[1]*P + suffix_mask``) and position ids continuing from the prefix length,
      ``P, P+1, ...``; the logits of row b are gathered at its last real suffix token.
    * The cache of batch 1 is expanded to the batch size per forward pass by
      `castlib.scoring.kv_cache.expand_cache`:
      each cache layer is shallow-copied and its key/value tensors replaced by
      ``expand(n, ...)`` views (no copy), so the model's in-place ``update`` (a ``torch.cat``
      that rebinds the copy's tensors) leaves the stored prefix cache untouched. Layers of other
      types fall back to ``copy.deepcopy`` + ``Cache.batch_repeat_interleave(n)`` (transformers
      5.x API).
    * Sliding-window layers (Gemma 2/3, Mistral) keep only their last ``window - 1`` prefix
      tokens, which is exactly what the suffix's first token may attend to.

Scoring is the one of `castlib.scoring.plain.score_plain`: single-token answers from the logits
at the last suffix token (all answers at once), otherwise each (suffix, answer) pair is one row
and the answer tokens' log-probs are summed.

Tokenisation boundary: the prefix is tokenised with the tokenizer's special tokens (BOS) and
each suffix without, separately. That can differ from tokenising the joined prompt when a token
would straddle the boundary; splitting at a blank line followed by a non-space character keeps
the boundary clean for common tokenizers (``"\\n\\n"`` is its own token in Gemma's, Llama's and
Qwen's vocabularies), and `joint_tokenisation_matches` checks it per prompt. When it holds, the
scores equal those of `score_prompts` on the joined prompts up to float rounding (<= 1e-4 in
float32 on the tiny test models). Tokenizers that append special tokens at the *end* of an
encoding (an EOS) are refused, since the prefix would then end in one.

Steering: prefix caching is refused while a castlib steering hook is active
(`castlib.steer.active_steer_hooks`). A ``positions="last"`` hook would see the suffix forward
as a decode step (cached tokens present) and steer every suffix token rather than the last
prompt token, and a ``positions="all"`` hook would not steer the cached prefix at all, so the
result would silently differ from steering the full prompt. Score steered prompts with
`castlib.scoring.evaluation.score_prompts` instead (CAST itself runs zero-shot, with no prefix to cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import LanguageModel
from ..padding import encode, pad
from ..progress import shown
from ..steer import active_steer_hooks
from .kv_cache import cache_kwargs, expand_cache, new_cache, returned_cache
from .logprobs import answer_token_ids, single_token_answers

__all__ = [
    "PrefixCache",
    "build_prefix_cache",
    "split_shared_prefix",
    "joint_tokenisation_matches",
    "score_suffixes",
    "score_prompts_cached",
    "check_no_steering",
]

SEPARATOR = "\n\n"


@dataclass
class PrefixCache:
    """The key/value cache of a shared prompt prefix (batch 1; treat as read-only).

    Attributes:
        text: the prefix text.
        token_ids: its token ids (with the tokenizer's leading special tokens, e.g. BOS).
        cache: the transformers ``Cache`` after running the prefix.
        model_id: ``id`` of the model it was computed with (checked on use).
    """

    text: str
    token_ids: list[int]
    cache: object
    model_id: int

    @property
    def n_tokens(self) -> int:
        """Number of prefix tokens P (the suffix positions start at P)."""
        return len(self.token_ids)


def check_no_steering(lm: LanguageModel) -> None:
    """Raise if a castlib steering hook is active on ``lm`` (see the module docstring)."""
    hooks = active_steer_hooks(lm)
    if hooks:
        raise RuntimeError(
            f"prefix-cached scoring is not supported while castlib steering is active "
            f"({len(hooks)} steer hook(s) on {lm.name}): with a cached prefix the suffix pass "
            "looks like a decode step, so positions='last' would steer every suffix token and "
            "positions='all' would miss the cached prefix. Use castlib.score_prompts "
            "(prefix_cache=False) for steered scoring."
        )


def split_shared_prefix(
    prompts: Sequence[str], separator: str = SEPARATOR
) -> tuple[str, list[str]]:
    """Split prompts into the longest common prefix ending in ``separator`` and the suffixes.

    The prefix ends right after a ``separator`` that is followed (in every prompt) by a
    non-whitespace character, so no token is likely to straddle the boundary. Raises
    ``ValueError`` when the prompts share no such prefix.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty sequence of strings")
    first = prompts[0]
    common = len(first)
    for p in prompts[1:]:
        n = min(common, len(p))
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        common = i
    # candidate cut points: just after a separator, within the common part, with the next
    # character (identical in every prompt up to `common`) not whitespace
    cut = first.rfind(separator, 0, common)
    while cut >= 0:
        end = cut + len(separator)
        nxt = [p[end : end + 1] for p in prompts]
        if end <= common and all(c and not c.isspace() for c in nxt):
            return first[:end], [p[end:] for p in prompts]
        cut = first.rfind(separator, 0, cut)
    raise ValueError(
        f"the prompts share no prefix ending in {separator!r} followed by text; prefix caching "
        "needs a common demonstration prefix (e.g. castlib.prompts.CrossTask prompts)"
    )


def _prefix_token_ids(tokenizer: object, prefix: str) -> list[int]:
    with_special = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    plain = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    lead = len(with_special) - len(plain)
    if lead < 0 or with_special[lead:] != plain:
        raise ValueError(
            "this tokenizer adds special tokens after the text (e.g. an EOS); a prefix encoded "
            "with them cannot be continued, so prefix caching is not supported for it"
        )
    if not with_special:
        raise ValueError("the prefix tokenises to nothing")
    return list(with_special)


def joint_tokenisation_matches(
    lm: LanguageModel, prefix: str, suffixes: Sequence[str]
) -> list[bool]:
    """For each suffix: does tokenising ``prefix + suffix`` equal the separate encodings joined?"""
    pre = _prefix_token_ids(lm.tokenizer, prefix)
    sufs = lm.tokenizer(list(suffixes), add_special_tokens=False)["input_ids"]
    joint = encode(lm.tokenizer, [prefix + s for s in suffixes])
    return [j == pre + s for j, s in zip(joint, sufs, strict=True)]


def build_prefix_cache(lm: LanguageModel, prefix: str) -> PrefixCache:
    """Run ``prefix`` once (batch 1) and keep its key/value cache."""
    check_no_steering(lm)
    ids = _prefix_token_ids(lm.tokenizer, prefix)
    input_ids = torch.as_tensor([ids], device=lm.device)
    with torch.inference_mode():
        out = lm.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            position_ids=torch.arange(len(ids), device=lm.device)[None],
            **cache_kwargs(lm, new_cache(lm)),
            use_cache=True,
            logits_to_keep=1,
        )
    return PrefixCache(text=prefix, token_ids=ids, cache=returned_cache(out), model_id=id(lm.model))


def _check_prefix(lm: LanguageModel, prefix: str | PrefixCache) -> PrefixCache:
    if isinstance(prefix, PrefixCache):
        if prefix.model_id != id(lm.model):
            raise ValueError("this PrefixCache was computed with another model")
        return prefix
    if not isinstance(prefix, str) or not prefix:
        raise TypeError("prefix must be a non-empty string or a PrefixCache")
    return build_prefix_cache(lm, prefix)


def _forward_suffixes(
    lm: LanguageModel,
    pc: PrefixCache,
    rows: list[list[int]],
    keep: torch.Tensor,
) -> torch.Tensor:
    """Run right-padded suffix rows after the cached prefix; logits at ``keep`` [n, k] columns."""
    n = len(rows)
    plen = pc.n_tokens
    ids, mask = pad(rows, lm.tokenizer.pad_token_id, "right", lm.device)
    width = ids.shape[1]
    full_mask = torch.cat([torch.ones((n, plen), dtype=mask.dtype, device=lm.device), mask], dim=1)
    positions = torch.arange(plen, plen + width, device=lm.device).expand(n, width)
    out = lm.model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions,
        **cache_kwargs(lm, expand_cache(pc.cache, n)),
        use_cache=True,
        logits_to_keep=keep.to(lm.device),
    )
    return out.logits


def score_suffixes(
    lm: LanguageModel,
    prefix: str | PrefixCache,
    suffixes: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities of each answer continuation after ``prefix + suffix``, prefix cached.

    Args:
        lm: the model (no castlib steering may be active).
        prefix: the shared prefix text (run once here) or a `PrefixCache` from
            `build_prefix_cache` (reused across calls).
        suffixes: the per-query rest of each prompt (non-empty; tokenised without special
            tokens).
        answers: the answer strings (scored as their continuation, `castlib.prompts.continuation`).
        batch_size: suffixes (or suffix-answer pairs) per forward pass.
        progress: show a progress bar (default: more than 4 batches).

    Returns:
        ``(scores [n_suffixes, n_answers] float32 on CPU, prompt token counts)``, the counts
        being prefix + suffix tokens (what the model attends to; only the suffix is computed).
    """
    if isinstance(suffixes, str):
        raise TypeError("suffixes must be a sequence of strings, not a single string")
    if len(suffixes) == 0:
        raise ValueError("empty suffix list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_no_steering(lm)
    pc = _check_prefix(lm, prefix)
    suffix_ids = encode(lm.tokenizer, suffixes, add_special_tokens=False)
    answer_ids = answer_token_ids(lm.tokenizer, answers)
    firsts = [row[0] for row in answer_ids]
    single = single_token_answers(answer_ids)
    n, k = len(suffix_ids), len(answer_ids)
    out = torch.empty((n, k), dtype=torch.float32)
    if single:
        items = [(i, None) for i in range(n)]
    else:
        items = [(i, j) for i in range(n) for j in range(k)]
    order = sorted(range(len(items)), key=lambda s: -len(suffix_ids[items[s][0]]))
    n_batches = -(-len(items) // batch_size)
    show = shown(progress, n_batches)
    cand = torch.as_tensor(firsts)
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(order), batch_size),
            total=n_batches,
            desc="scoring (prefix cached)",
            disable=not show,
            leave=False,
        ):
            chunk = [items[s] for s in order[start : start + batch_size]]
            if single:
                rows = [suffix_ids[i] for i, _ in chunk]
                keep = torch.as_tensor([[len(r) - 1] for r in rows])
                logits = _forward_suffixes(lm, pc, rows, keep)
                logp = torch.log_softmax(logits[:, 0].float(), dim=-1).cpu()
                out[[i for i, _ in chunk]] = logp[:, cand]
                continue
            rows = [suffix_ids[i] + answer_ids[j] for i, j in chunk]
            conts = [len(answer_ids[j]) for _, j in chunk]
            width = max(len(r) for r in rows)
            span = max(conts)
            # logits at suffix index len(suffix) - 1 + t predict answer token t
            keep = torch.stack(
                [
                    (len(suffix_ids[i]) - 1 + torch.arange(span)).clamp(max=width - 1)
                    for i, _ in chunk
                ]
            )
            logits = _forward_suffixes(lm, pc, rows, keep)
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for b, ((i, j), c) in enumerate(zip(chunk, conts, strict=True)):
                targets = torch.as_tensor(answer_ids[j])
                out[i, j] = logp[b, :c].gather(1, targets[:, None]).sum()
    return out, [pc.n_tokens + len(r) for r in suffix_ids]


def score_prompts_cached(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
    separator: str = SEPARATOR,
) -> tuple[torch.Tensor, list[int]]:
    """`castlib.scoring.evaluation.score_prompts` with the prompts' shared prefix cached (a
    `castlib.scoring.logprobs.Scorer`).

    The prompts are split by `split_shared_prefix` (longest common prefix ending in a blank
    line); the prefix runs once and each suffix is scored after it (`score_suffixes`). Same
    return value as `score_prompts`; the token counts are prefix + suffix tokens, which equal
    the joint prompt's token counts when `joint_tokenisation_matches` holds.
    """
    check_no_steering(lm)
    prefix, suffixes = split_shared_prefix(prompts, separator)
    return score_suffixes(lm, prefix, suffixes, answers, batch_size=batch_size, progress=progress)
