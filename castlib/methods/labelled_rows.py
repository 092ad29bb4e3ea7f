"""Labelled rows for the methods that learn from demonstrations: a class-stratified draw, and
the choice between a method's steered model and the unsteered one on held-out rows.

`stratified_sample`: ``per_class`` rows of every class (the I2CL authors' ``shot_per_class``),
or ``total`` rows dealt over the classes as evenly as possible (the classes that get one row
more are a seeded choice). The classes of a classification task are its labels; those of a
multiple-choice task are the answer letters that occur as gold answers in the pool (a letter
no row has as its answer is skipped, so the gold position is balanced over what exists). A
class with too few rows is refused with an error naming the parameter, never filled short.

`choose_steering`: the steered and the unsteered model scored zero-shot on the given rows
(restricted scoring over each row's label space), the better kept by (accuracy, then mean
gold log-probability); an exact tie keeps the unsteered model, as the steering methods'
tuning does (`castlib.methods.steering`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..models import LanguageModel
from ..scoring.evaluation import build_prompts, score_prompts
from ..tasks import Example, Task

__all__ = ["stratified_sample", "choose_steering"]


def stratified_sample(
    task: Task,
    pool: Sequence[Example],
    rng: random.Random,
    per_class: int | None = None,
    total: int | None = None,
    param: str = "per_class",
    where: str = "the pool",
) -> list[Example]:
    """``per_class`` rows of each class of ``task`` from ``pool`` (or, with ``total``, that
    many rows dealt over the classes), drawn by ``rng``; see the module docstring.

    Raises:
        ValueError: neither or both of ``per_class``/``total``, a count below 1, or a class
            with fewer rows in ``pool`` than its share (the message names ``param`` and
            ``where``).
    """
    if (per_class is None) == (total is None):
        raise ValueError("give exactly one of per_class and total")
    count = per_class if per_class is not None else total
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{param} must be an int >= 1, got {count!r}")
    by_class: dict[int, list[Example]] = {}
    for ex in pool:
        by_class.setdefault(ex.label, []).append(ex)
    if task.kind == "multiple_choice":
        classes = sorted(by_class)
    else:
        classes = list(range(len(task.labels)))
    if not classes:
        raise ValueError(f"{param}: {where} has no rows")
    if per_class is not None:
        shares = dict.fromkeys(classes, per_class)
    else:
        order = rng.sample(classes, len(classes))  # which classes get one row more
        shares = {
            c: total // len(classes) + (i < total % len(classes)) for i, c in enumerate(order)
        }
    out: list[Example] = []
    for c in classes:
        rows = by_class.get(c, [])
        if len(rows) < shares[c]:
            raise ValueError(
                f"{param}={count} needs {shares[c]} row(s) of label {task.labels[c]!r} in "
                f"{where}, which has {len(rows)}; lower {param} or give more labelled rows"
            )
        out += rng.sample(rows, shares[c])
    return out


def _score(lm: LanguageModel, rows: Sequence[tuple[Task, Example]], batch_size: int) -> tuple:
    by_task: dict[str, tuple[Task, list[Example]]] = {}
    for task, ex in rows:
        by_task.setdefault(task.name, (task, []))[1].append(ex)
    correct, gold_logp = 0, 0.0
    for task, exs in by_task.values():
        scores = score_prompts(lm, build_prompts(task, exs, None), task.labels, batch_size)[0]
        for row, ex in enumerate(exs):
            scores[row, len(task.label_space(ex)) :] = float("-inf")
        gold = torch.as_tensor([ex.label for ex in exs])
        correct += int((scores.argmax(dim=1) == gold).sum())
        gold_logp += float(scores.gather(1, gold[:, None]).sum())
    return correct / len(rows), gold_logp / len(rows)


def choose_steering(
    lm: LanguageModel,
    rows: Sequence[tuple[Task, Example]],
    steering: Callable[[], AbstractContextManager[Any]],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Whether to keep the steered model (``steering()``, a context) or the unsteered one,
    judged on ``rows``; returns ``{"steered": bool, "choice_grid": [unsteered, steered]}``,
    each entry with its ``accuracy`` and mean ``gold_logp``, and ``tune_seconds`` (the wall
    seconds of the choice). NaN scores count as worst."""
    if not rows:
        raise ValueError("choose_steering needs at least one labelled row")
    t0 = time.perf_counter()
    grid = []
    for steered in (False, True):
        if steered:
            with steering():
                acc, logp = _score(lm, rows, batch_size)
        else:
            acc, logp = _score(lm, rows, batch_size)
        if logp != logp:  # NaN log-probs: this configuration cannot win
            acc, logp = -1.0, float("-inf")
        grid.append({"steered": steered, "accuracy": acc, "gold_logp": logp})
    better = (grid[1]["accuracy"], grid[1]["gold_logp"]) > (
        grid[0]["accuracy"],
        grid[0]["gold_logp"],
    )
    seconds = round(time.perf_counter() - t0, 3)
    return {"steered": bool(better), "choice_grid": grid, "tune_seconds": seconds}
