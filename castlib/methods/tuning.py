"""The tuning protocol every steering method shares: the tuning rows and the configuration grid.

Tuning (CAST_SPEC step 5) never touches the target's test split, and every steering method
(CAST, task vector, function vector, ICV) tunes on the same budget and the same rows
(`castlib.methods.steering.SteeringMethod.tune` scores the grid).

Tuning rows (`tuning_set`). Drawn before anything else, from a random generator seeded by
(seed, protocol, task) alone, so the same seed, protocol and tasks give every method the same
row ids (recorded as ``tuning_ids``); the rows a method builds its vector from are drawn from
what is left (`row_keys`, the ``exclude`` of `draw_icl_item`), so the two never overlap.

    source      ``n_tune`` held-out rows of the source tasks' train pools, split over the
                sources as evenly as possible (`tuning_rows_per_source`: the first
                ``n_tune % n_sources`` sources give one row more), each scored on its own
                source task: no target labels at all. Exactly ``n_tune`` rows (a source too
                small for its share is refused).
    target_dev  ``min(n_tune, target train size)`` labelled rows of the target's train pool;
                ``n_tune`` <= 32 (`MAX_TARGET_DEV`).

Configurations (`config_grid`). A configuration is a *slot* (the method's discrete choice: a
layer l* for CAST and task vectors, a (K, layer) pair for function vectors, the single "all
layers" slot of ICV) with a scale alpha. alpha = 0 is the unsteered model whatever the slot,
so it is one configuration, scored once, first. With the default ``alphas=None`` every method
chooses among exactly ``n_configs`` distinct configurations (default `N_CONFIGS` = 21: the
unsteered model + 20 steered): the ``n_configs - 1`` steered ones are dealt over the slots as
evenly as possible (the first ``(n_configs - 1) % n_slots`` slots get one alpha more), slot
by slot taking `alpha_ladder` points of the method's ``alpha_range`` (geometric, or linear for
the task vector's replacement weights). On a model with five candidate layers: CAST 5 layers x
4 alphas, task vector 5 x 4, function vector 2 K x 5 layers x 2 alphas, ICV 20 alphas, each +
the unsteered model. An explicit ``alphas`` grid is used as given on every slot (0 added once;
``tuning_configs`` in the record is then the count searched, not ``n_configs``).
``include_unsteered=False`` drops the unsteered configuration, for analyses that must hold a
steered configuration (notebook 06's refits), never for a comparison.

Choice. Every configuration is scored zero-shot on the tuning rows; the best (accuracy, then
mean log-probability of the gold answer) wins, and an exact tie goes to the earlier grid
point: the unsteered model first, so steering is kept only when it scores strictly better.
When the unsteered model wins, the record says ``steered=False``, ``alpha=0.0`` and
``layer=None``, and the method evaluates exactly as zero-shot (no hook, the same scoring path).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence

from ..tasks import Example, Task

__all__ = [
    "PROTOCOLS",
    "SPACINGS",
    "N_CONFIGS",
    "MAX_TARGET_DEV",
    "Slot",
    "default_layers",
    "tuning_rows_per_source",
    "tuning_set",
    "row_keys",
    "alpha_ladder",
    "config_grid",
]

PROTOCOLS = ("source", "target_dev")
SPACINGS = ("geometric", "linear")
MAX_TARGET_DEV = 32
#: The tuning budget every steering method shares: distinct configurations, unsteered included.
N_CONFIGS = 21

#: A slot of the grid (a layer, ``"all"``, or a method's tuple); None: the unsteered model.
Slot = Hashable


def default_layers(n_layers: int) -> list[int]:
    """Candidate steering layers: five points spread over the middle half of the model."""
    return sorted({min(n_layers - 1, round(n_layers * f)) for f in (0.25, 0.375, 0.5, 0.625, 0.75)})


def _deal(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the first parts one more."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def tuning_rows_per_source(n_tune: int, n_sources: int) -> list[int]:
    """Held-out rows the ``source`` protocol draws from each source task, in source order:
    ``n_tune // n_sources`` each, the first ``n_tune % n_sources`` sources one more (they sum
    to ``n_tune`` exactly)."""
    if n_tune < 1 or n_sources < 1:
        raise ValueError(f"need n_tune >= 1 and at least one source (got {n_tune}, {n_sources})")
    return _deal(n_tune, n_sources)


def row_keys(rows: Sequence[tuple[Task, Example]]) -> set[str]:
    """``{"task:id"}`` of (task, example) rows: what the vector's draws must leave alone."""
    return {f"{task.name}:{ex.id}" for task, ex in rows}


def _rows_rng(seed: int, protocol: str, task: Task) -> random.Random:
    # a string seed is hashed with SHA-512: the same rows on every run and platform
    return random.Random(f"castlib.tuning|{protocol}|{seed}|{task.name}")


def tuning_set(
    protocol: str,
    sources: Sequence[Task],
    target: Task,
    n_tune: int,
    seed: int,
) -> list[tuple[Task, Example]]:
    """The (task, example) rows configurations are chosen on (see the module docstring);
    never target test rows. A function of (protocol, tasks, ``n_tune``, ``seed``) only, so
    every method given the same ones tunes on the same rows."""
    if protocol == "source":
        out = []
        for task, n in zip(sources, tuning_rows_per_source(n_tune, len(sources)), strict=True):
            pool = list(task.train)
            if len(pool) <= n:
                raise ValueError(
                    f"source protocol: source task {task.name} has {len(pool)} train rows; "
                    f"{n} of the n_tune={n_tune} tuning rows are held out from it and the vector "
                    f"needs rows besides; lower n_tune, add source data or use "
                    f"protocol='target_dev'"
                )
            out += [(task, ex) for ex in _rows_rng(seed, protocol, task).sample(pool, n)]
        return out
    if protocol == "target_dev":
        pool = list(target.train)
        if n_tune > MAX_TARGET_DEV:
            raise ValueError(f"target_dev protocol: n_tune must be <= {MAX_TARGET_DEV}")
        k = min(n_tune, len(pool))
        if k == 0:
            raise ValueError(f"target_dev protocol: target {target.name} has no train examples")
        return [(target, ex) for ex in _rows_rng(seed, protocol, target).sample(pool, k)]
    raise ValueError(f"unknown tuning protocol {protocol!r}; choose from {PROTOCOLS}")


def alpha_ladder(count: int, low: float, high: float, spacing: str = "geometric") -> list[float]:
    """``count`` nonzero scales from ``low`` to ``high``, ascending: geometric
    (``low * (high/low)^(i/(count-1))``) or linear; one point is ``high``. Rounded to 6
    significant digits, so records read 0.5, not 0.49999999999999994."""
    if count < 1:
        raise ValueError(f"an alpha ladder needs count >= 1, got {count}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if count == 1:
        return [float(high)]
    steps = [i / (count - 1) for i in range(count)]
    if spacing == "geometric":
        out = [low * (high / low) ** t for t in steps]
    else:
        out = [low + (high - low) * t for t in steps]
    return [float(f"{a:.6g}") for a in out]


def config_grid(
    slots: Sequence[Slot],
    n_configs: int,
    ladder: Callable[[int], list[float]],
    alphas: Sequence[float] | None = None,
    include_unsteered: bool = True,
) -> list[tuple[Slot, float]]:
    """The configurations tuning chooses among: ``(None, 0.0)`` (the unsteered model, once,
    first, unless ``include_unsteered`` is False), then ``(slot, alpha)`` slot by slot, alphas
    ascending. ``alphas=None``: ``n_configs - 1`` steered configurations dealt over the slots
    (the first ``(n_configs - 1) % len(slots)`` slots get one alpha more), slot i taking
    ``ladder(count_i)``; otherwise the nonzero ``alphas`` on every slot."""
    if not slots:
        raise ValueError("the tuning grid needs at least one slot (layer)")
    if len(set(slots)) != len(slots):
        raise ValueError(f"repeated slots in the tuning grid: {list(slots)}")
    steered: list[tuple[Slot, float]] = []
    if alphas is None:
        if n_configs - 1 < len(slots):
            raise ValueError(
                f"n_configs={n_configs} leaves {n_configs - 1} steered configurations for "
                f"{len(slots)} candidate slots (layers); raise n_configs or pass fewer layers"
            )
        for slot, count in zip(slots, _deal(n_configs - 1, len(slots)), strict=True):
            steered += [(slot, a) for a in ladder(count)]
    else:
        nonzero = sorted({float(a) for a in alphas if a != 0})
        steered = [(slot, a) for slot in slots for a in nonzero]
    grid = ([(None, 0.0)] if include_unsteered else []) + steered
    if not grid:
        raise ValueError("the tuning grid is empty: alphas are all 0 and include_unsteered=False")
    return grid
