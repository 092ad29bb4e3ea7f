"""Scoring a task by restricted continuation log-probability.

For a prompt p and the label space {a_1..a_K} of an example, the prediction is

    y_hat = argmax_k  log P(" a_k" | p) = argmax_k  sum_t log P(c_{k,t} | p, c_{k,<t})

(answer tokens c_k = the tokenisation of the continuation " a_k"; CAST_SPEC "Prompts").

Scoring runs one way down: `castlib.logprobs` (answer tokens, continuation log-probs) ->
`castlib.scoring` (plain: single-token answers in one pass at the last position, multi-token
answers as one sequence per (prompt, answer), steered as generation would be) and
`castlib.prefix_cache` (the shared demonstration prefix cached) -> this module, which builds
the prompts, picks the scorer (`score_prompts`) and computes the metrics.

Metrics: accuracy and macro-F1 (the unweighted mean of per-class F1 over the classes that occur
among gold labels or predictions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .last_token import (
    SCORING_CACHED,
    Config,
    entered,
    single_token_answers,
    sweep_scores,
    unsteered_hooks,
)
from .logprobs import (  # noqa: F401 - answer_token_ids, continuation_log_probs re-exported
    answer_token_ids,
    checked_inputs,
    continuation_log_probs,
)
from .models import LanguageModel
from .prefix_cache import score_prompts_cached
from .prompts import zero_shot
from .scoring import score_plain
from .tasks import Example, Task, load_task, sample_examples
from .validate import (
    check_optional_positive_int,
    check_positive_int,
)

__all__ = [
    "EvalResult",
    "evaluate",
    "evaluate_sweep",
    "result_from_scores",
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
    #: how the scores were computed: ``"full"`` (`score_prompts`, every token of every
    #: prompt), ``"demo_prefix_cached"`` (`castlib.prefix_cache`: a shared demonstration
    #: prefix run once) or `castlib.last_token.SCORING_CACHED` (`evaluate_sweep`)
    scoring: str = "full"
    #: rows whose best score is shared by two or more labels (exactly equal log-probs): the
    #: argmax gives them the first of those labels, so many ties mean the scores say nothing
    ties: int = 0

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


def score_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
    prefix_cache: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities of each answer continuation after each prompt.

    Plain scoring is `castlib.scoring.score_plain`; with ``prefix_cache=True`` the prompts'
    shared demonstration prefix runs once and is reused from its key/value cache
    (`castlib.prefix_cache.score_prompts_cached`; not with steering).

    Refused before any forward pass: blank prompts, an empty answer list, ``batch_size`` < 1,
    and a prompt that with its longest answer exceeds the model's context.

    Returns ``(scores [n_prompts, n_answers], prompt token counts)``.
    """
    prompts, answers, _, _ = checked_inputs(lm, prompts, answers)
    batch_size = check_positive_int(batch_size, "batch_size")
    if prefix_cache:
        return score_prompts_cached(lm, prompts, answers, batch_size=batch_size, progress=progress)
    return score_plain(lm, prompts, answers, batch_size=batch_size, progress=progress)


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


def _task(task: Task | str) -> Task:
    """A `Task`, or a task name loaded from the default data directory."""
    if isinstance(task, str):
        return load_task(task)
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task or a task name, got {type(task).__name__}")
    return task


def _examples(
    task: Task,
    split: str,
    limit: int | None,
    sample: int | None,
    sample_seed: int,
    examples: Sequence[Example] | None,
) -> list[Example]:
    if examples is None:
        examples = select_examples(task, split, limit, sample, sample_seed)
    elif limit is not None or sample is not None:
        raise ValueError("give either examples or limit/sample, not both")
    examples = list(examples)
    if not examples:
        raise ValueError(f"no examples to evaluate in {task.name}/{split}")
    return examples


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
    task = _task(task)
    batch_size = check_positive_int(batch_size, "batch_size")
    examples = _examples(task, split, limit, sample, sample_seed, examples)
    start = time.perf_counter()
    prompts = build_prompts(task, examples, prompt)
    scores, n_tokens = score_prompts(
        lm, prompts, task.labels, batch_size, progress, prefix_cache=prefix_cache
    )
    _check_finite(lm, task, split, examples, scores)
    seconds = time.perf_counter() - start
    scoring = "demo_prefix_cached" if prefix_cache else "full"
    return result_from_scores(task, split, examples, scores, n_tokens, seconds, scoring)


def _check_finite(
    lm: LanguageModel, task: Task, split: str, examples: Sequence[Example], scores: torch.Tensor
) -> None:
    """Refuse non-finite log-probabilities (NaN or infinite: no prediction can be made from
    them; an overflowing steering scale makes them NaN, see `castlib.steer`)."""
    space = torch.zeros_like(scores, dtype=torch.bool)
    for row, ex in enumerate(examples):
        space[row, : len(task.label_space(ex))] = True
    bad = (~torch.isfinite(scores) & space).any(dim=1)
    nan_rows = [ex.id for row, ex in enumerate(examples) if bad[row]]
    if nan_rows:
        raise FloatingPointError(
            f"{lm.name} gave NaN log-probabilities on {task.name}/{split} rows {nan_rows[:5]}"
            f"{' ...' if len(nan_rows) > 5 else ''} (or infinite ones: non-finite); no "
            f"prediction can be made (a steering scale too large for the dtype, or a broken "
            f"model)"
        )


def result_from_scores(
    task: Task,
    split: str,
    examples: Sequence[Example],
    scores: torch.Tensor,
    n_tokens: Sequence[int],
    seconds: float,
    scoring: str = "full",
) -> EvalResult:
    """The `EvalResult` of answer log-probs ``scores [n, n_labels]``: answers outside an
    example's label space are masked, the prediction is the argmax."""
    scores = scores.clone()
    for row, ex in enumerate(examples):
        scores[row, len(task.label_space(ex)) :] = float("-inf")
    pred = scores.argmax(dim=1).tolist()
    top = scores.topk(2, dim=1).values
    ties = int((top[:, 0] == top[:, 1]).sum())
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
        scoring=scoring,
        ties=ties,
    )


def evaluate_sweep(
    lm: LanguageModel,
    task: Task | str,
    configs: Sequence[Config],
    prompt: Builder | Sequence[str] | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 16,
    examples: Sequence[Example] | None = None,
    progress: bool | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
    pass_size: int = 64,
) -> list[EvalResult]:
    """`evaluate` under each of several last-position steering configurations, every prompt's
    prefix run once (`castlib.last_token.sweep_scores`): one `EvalResult` per configuration,
    equal to ``with config(): evaluate(...)`` up to float rounding of the scores.

    ``configs``: zero-argument callables returning a steering context that uses castlib
    ``positions="last"`` steering only (e.g. ``lambda: steer(lm, v, alpha=a, layers=[l])``),
    or None for the unsteered model. ``seconds`` of each result is its share of the sweep.
    ``batch_size`` prompts per prefix pass, ``pass_size`` per one-token pass (see
    `castlib.last_token.sweep_scores`).

    A single configuration with one-token answers is scored on the plain path instead (one
    full pass per prompt, which costs less than a prefix pass plus a one-token pass); the
    result's ``scoring`` says which path ran, and the configuration is checked the same way.

    Refused (ValueError, naming the hooked modules), because the cached prefix would not be
    exact: ``positions="all"`` steering, and anything hooked into the model besides castlib's
    last-position steering of block outputs (a forward hook or pre-hook on any submodule, a
    block's pre-hook, a patched ``forward``, torch's global hooks), whether a configuration
    installs it or it was there before the sweep (`castlib.steer.foreign_hooks`). Score such
    configurations with ``with config(): evaluate(...)``. Non-finite log-probs raise
    `FloatingPointError`; rows with tied best labels are counted in ``ties``.
    """
    task = _task(task)
    examples = _examples(task, split, limit, sample, sample_seed, examples)
    start = time.perf_counter()
    prompts = build_prompts(task, examples, prompt)
    scoring = SCORING_CACHED
    if len(configs) == 1 and single_token_answers(answer_token_ids(lm.tokenizer, task.labels)):
        # One configuration, one-token answers: a single full pass per prompt reads the
        # weights once, a prefix pass plus a one-token pass twice (exact on either path).
        with entered(lm, configs[0], unsteered_hooks(lm)):
            scores, n_tokens = score_prompts(lm, prompts, task.labels, batch_size, progress)
        all_scores, scoring = [scores], "full"
    else:
        all_scores, n_tokens = sweep_scores(
            lm, prompts, task.labels, configs, batch_size, progress, pass_size
        )
    for scores in all_scores:
        _check_finite(lm, task, split, examples, scores)
    seconds = (time.perf_counter() - start) / len(configs)
    return [
        result_from_scores(task, split, examples, scores, n_tokens, seconds, scoring)
        for scores in all_scores
    ]
