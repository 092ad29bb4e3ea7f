"""Plain scoring: the log-probability of each answer after each full prompt.

    scores[i, k] = log P(" a_k" | p_i)          (`castlib.scoring.logprobs`)

When every answer is a single, distinct token, one forward pass over the left-padded prompts
with logits only at the last position scores all answers at once. Otherwise each
(prompt, answer) pair is one row and the answer tokens' log-probs are summed
(`castlib.scoring.logprobs.continuation_log_probs`). `castlib.scoring.prefix_cache` is the
cached variant for prompts that share a demonstration prefix; both are a
`castlib.scoring.logprobs.Scorer`, and `castlib.scoring.evaluation.score_prompts` chooses between
them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..models import LanguageModel
from ..padding import encode, iter_batches
from ..progress import shown
from .logprobs import answer_token_ids, continuation_log_probs, single_token_answers

__all__ = ["score_plain"]


def _single_token_scores(
    lm: LanguageModel,
    prompt_ids: list[list[int]],
    answer_ids: list[int],
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """log P(answer | prompt) for single-token answers: ``[n_prompts, n_answers]``."""
    out = torch.empty((len(prompt_ids), len(answer_ids)), dtype=torch.float32)
    cand = torch.as_tensor(answer_ids, device=lm.device)
    batches = iter_batches(prompt_ids, batch_size, lm.tokenizer.pad_token_id, "left", lm.device)
    total = -(-len(prompt_ids) // batch_size)
    for batch in tqdm(batches, total=total, desc="scoring", disable=not progress, leave=False):
        logits = lm.model(**batch.model_inputs(), use_cache=False, logits_to_keep=1).logits
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        out[batch.indices] = logp[:, cand].cpu()
    return out


def _multi_token_scores(
    lm: LanguageModel,
    prompt_ids: list[list[int]],
    answer_ids: list[list[int]],
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """Summed answer-token log-probs for every (prompt, answer) pair: ``[n_prompts, n_answers]``."""
    n, k = len(prompt_ids), len(answer_ids)
    seqs = [(i, j) for i in range(n) for j in range(k)]
    out = torch.empty((n, k), dtype=torch.float32)
    order = sorted(range(len(seqs)), key=lambda s: -len(prompt_ids[seqs[s][0]]))
    for start in tqdm(
        range(0, len(order), batch_size), desc="scoring", disable=not progress, leave=False
    ):
        chunk = [seqs[s] for s in order[start : start + batch_size]]
        rows = [prompt_ids[i] + answer_ids[j] for i, j in chunk]
        sums = continuation_log_probs(lm, rows, [len(answer_ids[j]) for _, j in chunk])
        for b, (i, j) in enumerate(chunk):
            out[i, j] = sums[b].cpu()
    return out


def score_plain(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities of each answer continuation after each (full) prompt (a
    `castlib.scoring.logprobs.Scorer`)."""
    prompt_ids = encode(lm.tokenizer, prompts)
    answer_ids = answer_token_ids(lm.tokenizer, answers)
    show = shown(progress, -(-len(prompts) // batch_size))
    firsts = [row[0] for row in answer_ids]
    with torch.inference_mode():
        if single_token_answers(answer_ids):
            scores = _single_token_scores(lm, prompt_ids, firsts, batch_size, show)
        else:
            scores = _multi_token_scores(lm, prompt_ids, answer_ids, batch_size, show)
    return scores.clone(), [len(r) for r in prompt_ids]  # a normal tensor, not an inference one
