"""Tests for castlib.placebo: the placebo prefixes of notebook 01 (pure, no model)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from castlib.placebo import (
    demo_prompt,
    icl_items,
    match_lengths,
    shuffle_labels,
    unrelated_demos,
)
from castlib.prompts import demonstration, k_shot
from castlib.tasks import Example, Task
from tests.conftest import make_task


def mc_task(n_train: int = 12) -> Task:
    """Multiple choice with 2, 3 or 4 options per row (label spaces A-B, A-C, A-D)."""
    rows = []
    for i in range(n_train):
        n_opt = 2 + i % 3
        rows.append(
            Example(
                id=f"mc-{i}",
                fields={"question": f"q{i}?"},
                label=(i * 7) % n_opt,
                options=tuple(f"o{j}" for j in range(n_opt)),
            )
        )
    return Task(
        name="mc",
        kind="multiple_choice",
        labels=("A", "B", "C", "D"),
        instruction="Answer the question.",
        fields=("question",),
        splits={"train": rows, "test": rows[:2]},
    )


def one_label_task(n_train: int = 6) -> Task:
    rows = [Example(id=f"one-{i}", fields={"text": f"t{i}"}, label=1) for i in range(n_train)]
    return Task(
        name="one",
        kind="classification",
        labels=("no", "yes"),
        instruction="Say yes.",
        fields=("text",),
        splits={"train": rows, "test": rows[:1]},
    )


def test_icl_items_follow_the_seeded_draw_of_icl_deltas() -> None:
    task = make_task(n_train=10)
    items = icl_items(task, n=4, k=3, seed=5)
    # the same draw as the notebooks' icl_deltas: n rows, then k other rows per row
    rng = random.Random(5)
    pool = list(task.train)
    xs = rng.sample(pool, 4)
    expected = [(x, tuple(rng.sample([e for e in pool if e.id != x.id], 3))) for x in xs]
    assert items == expected
    for x, demos in items:
        assert len(demos) == 3 and x.id not in {d.id for d in demos}
        assert len({d.id for d in demos}) == 3
    assert len(icl_items(task, n=50, k=1)) == 10  # capped at the train rows


def test_icl_items_bad_input() -> None:
    task = make_task(n_train=3)
    with pytest.raises(ValueError, match=r"k=3 .* at least 4"):
        icl_items(task, n=2, k=3)
    with pytest.raises(ValueError, match="n must be"):
        icl_items(task, n=0, k=1)
    with pytest.raises(ValueError, match="k must be"):
        icl_items(task, n=1, k=0)


def test_demo_prompt_with_its_own_task_is_k_shot() -> None:
    task, other = make_task(), mc_task()
    x, demos = task.train[0], task.train[1:4]
    assert demo_prompt(task, x, task, demos) == k_shot(task, x, demos)
    mixed = demo_prompt(task, x, other, other.train[:2])
    assert mixed == (
        f"{task.instruction}\n\n{demonstration(other, other.train[0])}\n\n"
        f"{demonstration(other, other.train[1])}\n\nText: {x.fields['text']}\nAnswer:"
    )
    with pytest.raises(ValueError, match="demos"):
        demo_prompt(task, x, task, [])


@pytest.mark.parametrize("task", [make_task(n_train=12), mc_task(12)], ids=["cls", "mc"])
def test_shuffle_labels_keeps_inputs_and_marginal(task: Task) -> None:
    items = icl_items(task, n=8, k=2, seed=1)
    shuffled, changed = shuffle_labels(task, items, seed=3)
    assert [x for x, _ in shuffled] == [x for x, _ in items]
    before = [d for _, ds in items for d in ds]
    after = [d for _, ds in shuffled for d in ds]
    assert [d.id for d in after] == [d.id for d in before]
    assert [d.fields for d in after] == [d.fields for d in before]
    # same labels per label space, every one valid for its row
    for space in {task.label_space(d) for d in before}:
        old = Counter(d.label for d in before if task.label_space(d) == space)
        new = Counter(d.label for d in after if task.label_space(d) == space)
        assert old == new
    assert all(d.label < len(task.label_space(d)) for d in after)
    moved = sum(a.label != b.label for a, b in zip(before, after, strict=True))
    assert changed == moved / len(before)
    assert moved >= 2  # a cyclic permutation of a group with two labels moves at least two
    assert shuffle_labels(task, items, seed=3) == (shuffled, changed)  # deterministic


def test_shuffle_labels_refuses_a_single_label() -> None:
    task = one_label_task()
    items = icl_items(task, n=3, k=2)
    with pytest.raises(ValueError, match=r"'one'.*\['yes'\].*parameter tasks"):
        shuffle_labels(task, items)
    with pytest.raises(ValueError, match="no demonstrations"):
        shuffle_labels(task, [])


def test_match_lengths_greedy_without_replacement() -> None:
    assert match_lengths([5, 5, 9], [9, 4, 5, 6, 20]) == [2, 1, 0]  # 5->5, 5->4 (tie 4/6), 9->9
    assert match_lengths([], [1]) == []
    with pytest.raises(ValueError, match="candidates: 1 lengths"):
        match_lengths([1, 2], [3])


def test_unrelated_demos_match_lengths_with_distinct_rows() -> None:
    task, other = make_task(name="a", n_train=10), make_task(name="u", n_train=40, seed=7)
    items = icl_items(task, n=5, k=2, seed=0)
    placebo = unrelated_demos(task, items, other, len, pool_factor=4, seed=0)
    assert [x for x, _ in placebo] == [x for x, _ in items]
    chosen = [d for _, ds in placebo for d in ds]
    assert all(d.id.startswith("u-") for d in chosen)
    assert len({d.id for d in chosen}) == len(chosen) == 10  # distinct rows
    assert [len(ds) for _, ds in placebo] == [2] * 5
    # the greedy match over the seeded pool, recomputed here
    rng = random.Random("0:a")
    cands = rng.sample(list(other.train), 40)
    want = [len(demonstration(task, d)) for _, ds in items for d in ds]
    idx = match_lengths(want, [len(demonstration(other, c)) for c in cands])
    assert [d.id for d in chosen] == [cands[i].id for i in idx]
    # another studied task draws its own pool
    task_b = make_task(name="b", n_train=10)
    other_b = unrelated_demos(task_b, icl_items(task_b, n=5, k=2), other, len, seed=0)
    assert [d.id for _, ds in other_b for d in ds] != [d.id for d in chosen]


def test_unrelated_demos_bad_input() -> None:
    task = make_task(name="a", n_train=10)
    items = icl_items(task, n=5, k=2)
    with pytest.raises(ValueError, match="placebo_task must be another task"):
        unrelated_demos(task, items, task, len)
    small = make_task(name="u", n_train=9)
    with pytest.raises(ValueError, match=r"placebo_task 'u' has 9 train rows, fewer than the 10"):
        unrelated_demos(task, items, small, len)
    with pytest.raises(ValueError, match="pool_factor"):
        unrelated_demos(task, items, make_task(name="u", n_train=40), len, pool_factor=0)
