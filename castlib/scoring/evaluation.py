"""Scoring a task by restricted continuation log-probability.

For a prompt p and the label space {a_1..a_K} of an example, the prediction is

    y_hat = argmax_k  log P(" a_k" | p) = argmax_k  sum_t log P(c_{k,t} | p, c_{k,<t})

(answer tokens c_k = the tokenisation of the continuation " a_k"; CAST_SPEC "Prompts").

Scoring runs one way down: `castlib.scoring.logprobs` (answer tokens, continuation log-probs,
the `Scorer` interface) -> the scorers, `castlib.scoring.plain` (single-token answers in one
pass at the last position, multi-token answers as one sequence per (prompt, answer), steered as
generation would be), `castlib.scoring.prefix_cache` (the shared demonstration prefix cached)
and `castlib.scoring.last_token` (many last-position steering configurations against cached
prefixes) -> this module, which builds the prompts, validates them once, picks the scorer
(`SCORERS`, `score_prompts`) and turns the scores into an `EvalResult`
(`castlib.scoring.result`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from ..models import LanguageModel
from ..prompts import zero_shot
from ..tasks import Example, Task, load_task, sample_examples
from ..validate import (
    check_optional_positive_int,
    check_positive_int,
)
from .last_token import (
    SCORING_CACHED,
    Config,
    entered,
    sweep_scores,
    unsteered_hooks,
)
from .logprobs import Scorer, answer_token_ids, checked_inputs, single_token_answers
from .plain import score_plain
from .prefix_cache import score_prompts_cached
from .result import EvalResult, result_from_scores
from .result import check_finite as _check_finite

__all__ = [
    "SCORERS",
    "evaluate",
    "evaluate_sweep",
    "select_examples",
    "build_prompts",
    "score_prompts",
]

Builder = Callable[[Task, Example], str]

#: The scorers by the ``scoring`` label their results carry (`EvalResult.scoring`); every one
#: is a `castlib.scoring.logprobs.Scorer`. ``evaluate_sweep`` adds
#: `castlib.scoring.last_token.SCORING_CACHED` (several steering configurations at once).
SCORERS: dict[str, Scorer] = {
    "full": score_plain,
    "demo_prefix_cached": score_prompts_cached,
}


def _scoring(prefix_cache: bool) -> str:
    return "demo_prefix_cached" if prefix_cache else "full"


def score_prompts(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 16,
    progress: bool | None = None,
    prefix_cache: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Log-probabilities of each answer continuation after each prompt: the one front door
    to the `SCORERS`, which validates what they are given.

    Plain scoring is `castlib.scoring.plain.score_plain`; with ``prefix_cache=True`` the
    prompts' shared demonstration prefix runs once and is reused from its key/value cache
    (`castlib.scoring.prefix_cache.score_prompts_cached`; not with steering).

    Refused before any forward pass: blank prompts, an empty answer list, ``batch_size`` < 1,
    and a prompt that with its longest answer exceeds the model's context.

    Returns ``(scores [n_prompts, n_answers], prompt token counts)``.
    """
    prompts, answers, _, _ = checked_inputs(lm, prompts, answers)
    batch_size = check_positive_int(batch_size, "batch_size")
    scorer = SCORERS[_scoring(prefix_cache)]
    return scorer(lm, prompts, answers, batch_size=batch_size, progress=progress)


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


def _prepared(
    task: Task | str,
    prompt: Builder | Sequence[str] | None,
    split: str,
    limit: int | None,
    sample: int | None,
    sample_seed: int,
    examples: Sequence[Example] | None,
) -> tuple[Task, list[Example], list[str]]:
    """What `evaluate` and `evaluate_sweep` score: the task (loaded by name), its rows and
    their prompts."""
    task = _task(task)
    examples = _examples(task, split, limit, sample, sample_seed, examples)
    return task, examples, build_prompts(task, examples, prompt)


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
            against its key/value cache (`castlib.scoring.prefix_cache`; refused while
            steering).

    ``task`` may be a task name, loaded with `castlib.tasks.load_task` from the default data
    directory. Works inside a `castlib.steer` context (the steering applies to every forward
    pass).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    start = time.perf_counter()
    task, examples, prompts = _prepared(task, prompt, split, limit, sample, sample_seed, examples)
    scores, n_tokens = score_prompts(
        lm, prompts, task.labels, batch_size, progress, prefix_cache=prefix_cache
    )
    _check_finite(lm, task, split, examples, scores)
    seconds = time.perf_counter() - start
    return result_from_scores(
        task, split, examples, scores, n_tokens, seconds, _scoring(prefix_cache)
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
    prefix run once (`castlib.scoring.last_token.sweep_scores`): one `EvalResult` per configuration,
    equal to ``with config(): evaluate(...)`` up to float rounding of the scores.

    ``configs``: zero-argument callables returning a steering context that uses castlib
    ``positions="last"`` steering only (e.g. ``lambda: steer(lm, v, alpha=a, layers=[l])``),
    or None for the unsteered model. ``seconds`` of each result is its share of the sweep.
    ``batch_size`` prompts per prefix pass, ``pass_size`` per one-token pass (see
    `castlib.scoring.last_token.sweep_scores`).

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
    start = time.perf_counter()
    task, examples, prompts = _prepared(task, prompt, split, limit, sample, sample_seed, examples)
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
