"""Placebo prefixes for the ICL-enhancement analysis (notebook 01): as many demonstrations, no
task signal.

The real ICL enhancement of a task (CAST_SPEC, analysis 1) uses ``k`` in-task demonstrations
``D_x`` (train rows other than ``x``):

    delta_l(x) = h_l(Pk(x; D_x)) - h_l(P0(x)).

A placebo replaces ``D_x`` by ``k`` demonstrations that carry no (or the wrong) task signal and
keeps everything else: the task's instruction, the template and the query. Its enhancement
``h_l(P_placebo(x)) - h_l(P0(x))`` shows how much of the real one any prefix of ``k``
demonstrations produces. Two placebos:

* **shuffled labels** (`shuffle_labels`): the same demonstrations, their labels permuted across
  all the demonstrations of the task (the ``n * k`` of its items), one random cyclic
  permutation (Sattolo's algorithm) within each group of rows that share a label space (so
  every label stays valid for its row). The inputs, the template and the label marginal are
  kept; the input-label mapping is broken. A cyclic permutation moves every position, so
  whenever a group holds two labels at least two demonstrations change label; the share that
  changed is returned.
* **unrelated task** (`unrelated_demos`): ``k`` rows of another task ``U`` in place of
  ``D_x``, each rendered as ``U``'s demonstration (its input block and answer) under the task's
  own instruction and followed by the task's query (`demo_prompt`). Each one is a distinct row
  of a seeded pool of ``U``'s train rows whose demonstration is the closest in token length to
  the real demonstration it replaces (`match_lengths`, greedy), so the prefix has the same
  number of demonstrations and as nearly the same number of tokens as ``U``'s lengths allow
  (a task of short inputs cannot match long demonstrations: measure the gap). One ``U`` serves
  every studied task, so the placebo enhancements share ``U``'s content across tasks (a
  stricter placebo than one whose demonstrations differ per task).

`icl_items` draws the real ``(x, D_x)`` the same way as the notebooks' ``icl_deltas``
(``random.Random(seed)``: ``n`` rows, then ``k`` other rows per row), so the real enhancement is
unchanged by the placebo analysis.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from .prompts import ANSWER_PREFIX, demonstration, input_block
from .tasks import Example, Task

__all__ = [
    "Item",
    "demo_prompt",
    "icl_items",
    "match_lengths",
    "shuffle_labels",
    "unrelated_demos",
]

#: One few-shot prompt's query and its demonstrations.
Item = tuple[Example, tuple[Example, ...]]


def icl_items(task: Task, n: int, k: int, seed: int = 0) -> list[Item]:
    """``min(n, len(train))`` seeded train rows ``x`` of ``task``, each with ``k`` other train rows
    as its demonstrations ``D_x`` (one ``random.Random(seed)``: the rows first, then each row's
    demonstrations in turn).

    Raises:
        ValueError: ``n`` or ``k`` below 1, or fewer than ``k + 1`` train rows (every prompt needs
            ``k`` demonstrations other than its query).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pool = list(task.train)
    if len(pool) < k + 1:
        raise ValueError(
            f"task {task.name!r} has {len(pool)} train rows; k={k} demonstrations other than "
            f"the query need at least {k + 1}"
        )
    rng = random.Random(seed)
    xs = rng.sample(pool, min(n, len(pool)))
    return [(x, tuple(rng.sample([e for e in pool if e.id != x.id], k))) for x in xs]


def demo_prompt(task: Task, example: Example, demo_task: Task, demos: Sequence[Example]) -> str:
    """``"{I_task}\\n\\n" + demos + "\\n\\n{input block of x}\\nAnswer:"`` with each demonstration
    rendered by ``demo_task`` (its input block and answer). With ``demo_task = task`` this is the
    k-shot prompt ``Pk(x; D)`` (`castlib.prompts.k_shot`) exactly."""
    if not demos:
        raise ValueError("demos must hold at least one demonstration")
    shots = "\n\n".join(demonstration(demo_task, d) for d in demos)
    return f"{task.instruction}\n\n{shots}\n\n{input_block(task, example)}\n{ANSWER_PREFIX}"


def _sattolo(n: int, rng: random.Random) -> list[int]:
    """A uniformly random cyclic permutation of ``range(n)`` (Sattolo 1986): no fixed point."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffle_labels(task: Task, items: Sequence[Item], seed: int = 0) -> tuple[list[Item], float]:
    """The shuffled-label placebo of ``items``: every demonstration keeps its input and gets the
    label of another demonstration of the same label-space group (see the module docstring).

    Returns:
        ``(items with relabelled demonstrations, share of demonstrations whose label changed)``;
        the queries are untouched.

    Raises:
        ValueError: no demonstrations, or every group of demonstrations carries one label only
            (shuffling would change nothing): pass a task whose sampled train rows hold at least
            two labels.
    """
    demos = [d for _, ds in items for d in ds]
    if not demos:
        raise ValueError("items hold no demonstrations to shuffle")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, d in enumerate(demos):
        groups.setdefault(task.label_space(d), []).append(i)
    if all(len({demos[i].label for i in idx}) < 2 for idx in groups.values()):
        labels = sorted({task.answer(d) for d in demos})
        raise ValueError(
            f"items: the {len(demos)} demonstrations of task {task.name!r} carry the label(s) "
            f"{labels} with one label per label space, so shuffling their labels changes "
            "nothing; use a task (parameter tasks) whose sampled train rows hold at least two "
            "labels, or raise n / k"
        )
    rng = random.Random(seed)
    new_label = [d.label for d in demos]
    for idx in groups.values():
        perm = _sattolo(len(idx), rng)
        for pos, src in zip(idx, perm, strict=True):
            new_label[pos] = demos[idx[src]].label
    relabelled = iter(
        dataclasses.replace(d, label=lab) for d, lab in zip(demos, new_label, strict=True)
    )
    out = [(x, tuple(next(relabelled) for _ in ds)) for x, ds in items]
    changed = sum(a != b.label for a, b in zip(new_label, demos, strict=True)) / len(demos)
    return out, changed


def match_lengths(targets: Sequence[int], candidates: Sequence[int]) -> list[int]:
    """Greedy length matching without replacement: for each target length in turn, the index of
    the unused candidate with the smallest ``|candidate - target|`` (the lowest index on ties).

    Raises:
        ValueError: fewer candidates than targets.
    """
    if len(candidates) < len(targets):
        raise ValueError(
            f"candidates: {len(candidates)} lengths cannot match {len(targets)} targets without "
            "replacement"
        )
    free = list(range(len(candidates)))
    out = []
    for t in targets:
        best = min(free, key=lambda i: (abs(candidates[i] - t), i))
        free.remove(best)
        out.append(best)
    return out


def unrelated_demos(
    task: Task,
    items: Sequence[Item],
    placebo_task: Task,
    n_tokens: Callable[[str], int],
    pool_factor: int = 4,
    seed: int = 0,
) -> list[Item]:
    """The unrelated-task placebo of ``items``: every real demonstration (in item order) is
    replaced by a distinct row of ``placebo_task`` whose demonstration is the closest in token
    length (``n_tokens`` of the rendered demonstration), matched greedily without replacement
    (`match_lengths`) among a pool of ``min(pool_factor * n_demos, len(train))`` of its train rows
    drawn with ``random.Random(f"{seed}:{task.name}")`` (so two studied tasks get independent
    pools, as their real demonstrations are). Build the prompts with
    ``demo_prompt(task, x, placebo_task, demos)``.

    Raises:
        ValueError: ``placebo_task`` is ``task``; it has fewer train rows than ``items`` hold
            demonstrations (parameter ``placebo_task``, or lower ``n`` / ``k``); or
            ``pool_factor`` below 1.
    """
    if placebo_task.name == task.name:
        raise ValueError(
            f"placebo_task must be another task than the one studied, got {task.name!r} for both"
        )
    if pool_factor < 1:
        raise ValueError(f"pool_factor must be >= 1, got {pool_factor}")
    want = [n_tokens(demonstration(task, d)) for _, ds in items for d in ds]
    pool = list(placebo_task.train)
    if len(pool) < len(want):
        raise ValueError(
            f"placebo_task {placebo_task.name!r} has {len(pool)} train rows, fewer than the "
            f"{len(want)} demonstrations of task {task.name!r} (n * k) it must replace with "
            "distinct rows: choose a placebo_task with more train rows or lower n / k"
        )
    rng = random.Random(f"{seed}:{task.name}")
    cands = rng.sample(pool, min(pool_factor * len(want), len(pool)))
    chosen = iter(match_lengths(want, [n_tokens(demonstration(placebo_task, c)) for c in cands]))
    return [(x, tuple(cands[next(chosen)] for _ in ds)) for x, ds in items]
