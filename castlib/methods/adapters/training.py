"""The training loop of the adapter methods: answer-token causal-LM loss on frozen models.

Each training example is the zero-shot prompt of its own task ``P0(x)`` followed by the scored
continuation ``" " + answer`` (tokenised exactly as `castlib.evaluate` scores it,
`castlib.scoring.logprobs`); the loss of a batch is the mean negative log-likelihood over its
answer tokens,

    loss = - sum_b sum_t log P(a_{b,t} | P0(x_b), a_{b,<t}) / sum_b |a_b|   (+ the regulariser)

Adam, a fixed number of steps, batches drawn from seeded epoch permutations; the model stays in
eval mode (no dropout), so training is deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ...models import LanguageModel
from ...padding import encode
from ...progress import shown
from ...prompts import zero_shot
from ...scoring.logprobs import answer_token_ids, continuation_log_probs
from ...tasks import Example, Task
from .layers import AdapterHandle

__all__ = ["answer_rows", "answer_nll", "train_adapter"]


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
            disable=not shown(progress, steps),
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
