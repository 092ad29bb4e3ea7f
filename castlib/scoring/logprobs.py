"""Token-level log-probabilities: the primitives every scorer builds on.

For a prompt p and an answer a, the scored continuation is ``" " + a``
(`castlib.prompts.continuation`) tokenised without special tokens, c = (c_1..c_T), and

    log P(c | p) = sum_t log P(c_t | p, c_<t)

`answer_token_ids` gives c for each answer; `continuation_log_probs` computes the sum for rows
that end in their continuation, in one left-padded forward pass. Inside a
``steer(..., positions="last")`` context the steered positions are the last prompt token and
every continuation token, as they would be when the answer is generated. When every answer is
one token and no two share it (`single_token_answers`), one position's logits score them all.

Every scorer of `castlib.scoring` has one interface, `Scorer`: prompts and answer strings in,
``(scores [n_prompts, n_answers] float32 on CPU, prompt token counts)`` out, with
``scores[i, k] = log P(" " + answers[k] | prompts[i])``. `checked_inputs` validates what a
scorer is given, once, at the front door (`castlib.scoring.evaluation.score_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from ..models import LanguageModel
from ..padding import encode, pad, position_ids_from_mask
from ..prompts import continuation
from ..steer import override_positions
from ..validate import (
    check_answers,
    check_prompt_sizes,
    check_prompts,
    check_token_lengths,
)

__all__ = [
    "Scorer",
    "answer_token_ids",
    "continuation_log_probs",
    "checked_inputs",
    "single_token_answers",
]


class Scorer(Protocol):
    """The interface of every scorer: ``scores[i, k] = log P(" " + answers[k] | prompts[i])``.

    ``prompts`` and ``answers`` have passed `checked_inputs`; ``batch_size`` >= 1 rows per
    forward pass; ``progress``: show a progress bar (None: when there are many batches).
    Returns ``(scores [n_prompts, n_answers] float32 on CPU, prompt token counts)``.
    """

    def __call__(
        self,
        lm: LanguageModel,
        prompts: Sequence[str],
        answers: Sequence[str],
        batch_size: int = 16,
        progress: bool | None = None,
    ) -> tuple[torch.Tensor, list[int]]: ...


def single_token_answers(answer_ids: Sequence[Sequence[int]]) -> bool:
    """Whether every answer is one token and no two answers share it: then one position's
    logits score them all."""
    firsts = [row[0] for row in answer_ids]
    return all(len(r) == 1 for r in answer_ids) and len(set(firsts)) == len(firsts)


def answer_token_ids(tokenizer: object, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer's continuation (no special tokens); empty ones raise."""
    ids = tokenizer([continuation(a) for a in answers], add_special_tokens=False)["input_ids"]
    for a, row in zip(answers, ids, strict=True):
        if not a.strip() or len(row) == 0:
            raise ValueError(
                f"label word {a!r} is blank or tokenises to nothing; choose another label word"
            )
    return ids


def continuation_log_probs(
    lm: LanguageModel, rows: Sequence[Sequence[int]], conts: Sequence[int]
) -> torch.Tensor:
    """``sum_t log p(row[t] | row[:t])`` over the last ``conts[b]`` tokens of each row: ``[n]``.

    One left-padded forward pass with logits only at the scored positions; inside a
    `castlib.steer` context the last prompt token and every continuation token are steered
    (as generation would steer them). Differentiable (used for adapter training too).
    """
    check_token_lengths([len(r) for r in rows], lm.context_length, lm.name, what="sequence")
    ids, mask = pad(list(rows), lm.tokenizer.pad_token_id, "left", lm.device)
    width = ids.shape[1]
    keep = max(conts) + 1
    cols = torch.arange(width, device=lm.device)
    first = torch.as_tensor([width - c - 1 for c in conts], device=lm.device)
    with override_positions(lm, cols[None, :] >= first[:, None]):
        logits = lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
            logits_to_keep=keep,
        ).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    sums = []
    for b, (row, c) in enumerate(zip(rows, conts, strict=True)):
        targets = torch.as_tensor(list(row[len(row) - c :]), device=lm.device)
        # logits at kept index t predict the token at kept index t + 1
        sums.append(logp[b, keep - c - 1 : keep - 1].gather(1, targets[:, None]).sum())
    return torch.stack(sums)


def checked_inputs(
    lm: LanguageModel, prompts: Sequence[str], answers: Sequence[str]
) -> tuple[list[str], list[str], list[list[int]], list[list[int]]]:
    """Validate what a scorer is given, before any forward pass, and tokenise it:
    ``(prompts, answers, prompt token ids, answer token ids)``.

    Refused: blank prompts, answers that are not a non-empty list of strings, and a prompt that
    with its longest answer exceeds the model's context (`LanguageModel.context_length`).
    """
    prompts = check_prompts(prompts)
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of strings, got {answers!r}")
    answers = list(answers)
    if not answers:
        raise ValueError("answers is empty: give the answer strings to score, e.g. ['yes', 'no']")
    if not all(isinstance(a, str) for a in answers):
        raise TypeError(f"answers must be strings, got {answers!r}")
    answer_ids = answer_token_ids(lm.tokenizer, answers)
    check_answers(answers, answer_ids)  # repeated, whitespace variants, identical tokens
    check_prompt_sizes(lm.tokenizer, prompts, lm.context_length, lm.name)  # before encoding
    prompt_ids = encode(lm.tokenizer, prompts)
    longest = max(len(row) for row in answer_ids)
    check_token_lengths(
        [len(row) + longest for row in prompt_ids],
        lm.context_length,
        lm.name,
        what="prompt (with its longest answer)",
    )
    return prompts, answers, prompt_ids, answer_ids
