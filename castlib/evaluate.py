"""Scoring a task by restricted continuation log-probability.

For a prompt p and the label space {a_1..a_K} of an example, the prediction is

    y_hat = argmax_k  log P(" a_k" | p) = argmax_k  sum_t log P(c_{k,t} | p, c_{k,<t})

(answer tokens c_k = the tokenisation of the continuation " a_k"; CAST_SPEC "Prompts").

When every answer of the task is a single, distinct token, one forward pass over the
left-padded prompts with logits only at the last position scores all answers at once. Otherwise
each (prompt, answer) pair is one sequence and the answer tokens' log-probs are summed; inside a
``steer(..., positions="last")`` context the steered positions are then the last prompt token
and every answer token, as they would be when the answer is generated.

Metrics: accuracy and macro-F1 (the unweighted mean of per-class F1 over the classes that occur
among gold labels or predictions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .models import LanguageModel
from .padding import encode, iter_batches, pad, position_ids_from_mask
from .prompts import continuation, zero_shot
from .steer import override_positions
from .tasks import Example, Task, load_task, sample_examples
from .validate import (
    check_optional_positive_int,
    check_positive_int,
    check_prompts,
    check_token_lengths,
)

__all__ = [
    "EvalResult",
    "evaluate",
    "select_examples",
    "continuation_log_probs",
    "score_prompts",
    "macro_f1",
    "answer_token_ids",
]

Builder = Callable[[Task, Example], str]


@dataclass
class EvalResult:
    """What `evaluate` measured."""

    task: str
    split: str
    n: int
    accuracy: float
    macro_f1: float
    prompt_tokens_per_query: float
    prompt_tokens_total: int
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self, with_predictions: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_predictions:
            out.pop("predictions")
        return out

    def __repr__(self) -> str:
        return (
            f"EvalResult({self.task}/{self.split}: n={self.n}, accuracy={self.accuracy:.4f}, "
            f"macro_f1={self.macro_f1:.4f}, prompt_tokens/query={self.prompt_tokens_per_query:.1f}, "
            f"{self.seconds:.2f}s)"
        )


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Unweighted mean F1 over the classes present in ``gold`` or ``pred``."""
    if len(gold) != len(pred):
        raise ValueError("gold and pred differ in length")
    if not gold:
        return float("nan")
    scores = []
    for c in sorted(set(gold) | set(pred)):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def answer_token_ids(tokenizer: object, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer's continuation (no special tokens); empty ones raise."""
    ids = tokenizer([continuation(a) for a in answers], add_special_tokens=False)["input_ids"]
    for a, row in zip(answers, ids, strict=True):
        if not a.strip() or len(row) == 0:
            raise ValueError(
                f"label word {a!r} is blank or tokenises to nothing; choose another label word"
            )
    return ids


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


def score_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
    prefix_cache: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities of each answer continuation after each prompt.

    With ``prefix_cache=True`` the prompts' shared demonstration prefix runs once and is reused
    from its key/value cache (`castlib.prefix_cache.score_prompts_cached`; not with steering).

    Refused before any forward pass: blank prompts, an empty answer list, ``batch_size`` < 1,
    and a prompt that with its longest answer exceeds the model's context.

    Returns ``(scores [n_prompts, n_answers], prompt token counts)``.
    """
    prompts = check_prompts(prompts)
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of strings, got {answers!r}")
    answers = list(answers)
    if not answers:
        raise ValueError("answers is empty: give the answer strings to score, e.g. ['yes', 'no']")
    if not all(isinstance(a, str) for a in answers):
        raise TypeError(f"answers must be strings, got {answers!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    answer_ids = answer_token_ids(lm.tokenizer, answers)
    prompt_ids = encode(lm.tokenizer, prompts)
    longest = max(len(row) for row in answer_ids)
    check_token_lengths(
        [len(row) + longest for row in prompt_ids],
        lm.context_length,
        lm.name,
        what="prompt (with its longest answer)",
    )
    if prefix_cache:
        from .prefix_cache import score_prompts_cached

        return score_prompts_cached(lm, prompts, answers, batch_size=batch_size, progress=progress)
    show = progress if progress is not None else len(prompts) > 4 * batch_size
    firsts = [row[0] for row in answer_ids]
    with torch.inference_mode():
        if all(len(row) == 1 for row in answer_ids) and len(set(firsts)) == len(firsts):
            scores = _single_token_scores(lm, prompt_ids, firsts, batch_size, show)
        else:
            scores = _multi_token_scores(lm, prompt_ids, answer_ids, batch_size, show)
    return scores.clone(), [len(r) for r in prompt_ids]  # a normal tensor, not an inference one


def build_prompts(
    task: Task, examples: Sequence[Example], prompt: Builder | Sequence[str] | None
) -> list[str]:
    """The prompt of each example: zero-shot by default, a builder's, or a given list."""
    if prompt is None:
        return [zero_shot(task, ex) for ex in examples]
    if callable(prompt):
        return [prompt(task, ex) for ex in examples]
    if isinstance(prompt, str):
        raise TypeError("prompt must be a builder or a list of prompts, not a single string")
    prompts = list(prompt)
    if len(prompts) != len(examples):
        raise ValueError(f"{len(prompts)} prompts for {len(examples)} examples")
    return prompts


def select_examples(
    task: Task,
    split: str = "test",
    limit: int | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
) -> list[Example]:
    """The rows of ``task``'s ``split`` to score: all, the first ``limit``, or a seeded sample."""
    limit = check_optional_positive_int(limit, "limit")
    sample = check_optional_positive_int(sample, "sample")
    if isinstance(sample_seed, bool) or not isinstance(sample_seed, int):
        raise TypeError(f"sample_seed must be an int, got {sample_seed!r}")
    rows = task.split(split)
    if limit is not None and sample is not None:
        raise ValueError("give limit (the first rows) or sample (a seeded sample), not both")
    if limit is not None:
        return list(rows[:limit])
    return sample_examples(rows, sample, sample_seed)


def evaluate(
    lm: LanguageModel,
    task: Task | str,
    prompt: Builder | Sequence[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    examples: Sequence[Example] | None = None,
    progress: bool | None = None,
    prefix_cache: bool = False,
    sample: int | None = None,
    sample_seed: int = 0,
) -> EvalResult:
    """Score ``task`` (its ``split``, its first ``limit`` examples, a seeded ``sample`` of them,
    or the given ``examples``).

    Args:
        limit: the first ``limit`` rows of the split, in file order (split files may be sorted
            by label: prefer ``sample``).
        sample: a uniform sample of this many rows (`castlib.tasks.sample_examples` with
            ``sample_seed``); not together with ``limit``.
        prompt: None (zero-shot), a builder ``(task, example) -> str``, or one prompt per
            example.
        batch_size: prompts per forward pass.
        prefix_cache: run the prompts' shared demonstration prefix once and score each query
            against its key/value cache (`castlib.prefix_cache`; refused while steering).

    ``task`` may be a task name, loaded with `castlib.tasks.load_task` from the default data
    directory. Works inside a `castlib.steer` context (the steering applies to every forward
    pass).
    """
    if isinstance(task, str):
        task = load_task(task)
    elif not isinstance(task, Task):
        raise TypeError(f"task must be a Task or a task name, got {type(task).__name__}")
    batch_size = check_positive_int(batch_size, "batch_size")
    if examples is None:
        examples = select_examples(task, split, limit, sample, sample_seed)
    elif limit is not None or sample is not None:
        raise ValueError("give either examples or limit/sample, not both")
    examples = list(examples)
    if not examples:
        raise ValueError(f"no examples to evaluate in {task.name}/{split}")
    start = time.perf_counter()
    prompts = build_prompts(task, examples, prompt)
    scores, n_tokens = score_prompts(
        lm, prompts, task.labels, batch_size, progress, prefix_cache=prefix_cache
    )
    nan_rows = [ex.id for row, ex in enumerate(examples) if torch.isnan(scores[row]).any()]
    if nan_rows:
        raise FloatingPointError(
            f"{lm.name} gave NaN log-probabilities on {task.name}/{split} rows {nan_rows[:5]}"
            f"{' ...' if len(nan_rows) > 5 else ''}; no prediction can be made (a steering "
            f"scale too large for the dtype, or a broken model)"
        )
    for row, ex in enumerate(examples):
        n_valid = len(task.label_space(ex))
        scores[row, n_valid:] = float("-inf")
    pred = scores.argmax(dim=1).tolist()
    seconds = time.perf_counter() - start
    gold = [ex.label for ex in examples]
    predictions = [
        {
            "id": ex.id,
            "gold": task.labels[g],
            "pred": task.labels[p],
            "correct": g == p,
            "log_probs": [round(float(s), 6) for s in scores[i, : len(task.label_space(ex))]],
        }
        for i, (ex, g, p) in enumerate(zip(examples, gold, pred, strict=True))
    ]
    return EvalResult(
        task=task.name,
        split=split,
        n=len(examples),
        accuracy=sum(g == p for g, p in zip(gold, pred, strict=True)) / len(examples),
        macro_f1=macro_f1(gold, pred),
        prompt_tokens_per_query=sum(n_tokens) / len(n_tokens),
        prompt_tokens_total=sum(n_tokens),
        seconds=seconds,
        predictions=predictions,
    )
