"""Shared machinery of the steering methods: activation extraction and configuration tuning.

Tuning (CAST_SPEC step 5) never touches the target's test split, and every steering method
(CAST, task vector, function vector, ICV) tunes on the same budget and the same rows. The spec
names the two protocols but no grid; the shared budget, the unsteered configuration and the
shared rows are this project's choices, so that no method wins by searching more
configurations or luckier rows, and a method whose steering does not help falls back to the
zero-shot model instead of being forced to steer. (I2CL learns its coefficients by gradient
descent on its own calibration rows and has no grid: `castlib.methods.i2cl`.)

Tuning rows and the configuration grid (`tuning_set`, `config_grid`) are
`castlib.methods.tuning`; this module holds what the steering methods share besides: drawing
ICL items and their activations, building the vector, and `SteeringMethod`, which scores the
grid on the tuning rows and keeps the best configuration.

Scoring the grid (``scoring``): with ``positions="last"`` every grid point is scored against
one cached prefix per tuning prompt (`castlib.scoring.last_token.sweep_scores`: one prefix pass, then
one token per prompt and grid point), which gives the same predictions as scoring every grid
point in full (``scoring="full"``); ``positions="all"`` always scores in full. The test
evaluation scores one configuration: alone and with one-token answers it takes the plain pass
(cheaper than a prefix pass plus a one-token pass), shared with other methods
(`castlib.methods.evaluate_methods`) or with multi-token answers the cached path. The paths
that ran are in the record: ``tuning_scoring`` and ``scoring``.
"""

from __future__ import annotations

import dataclasses
import random
import time
import warnings
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch

from ..models import LanguageModel
from ..prompts import k_shot, zero_shot
from ..record import record_activations
from ..scoring.evaluation import build_prompts, score_prompts
from ..scoring.last_token import SCORING_CACHED, sweep_scores
from ..steer import steer
from ..tasks import Example, Task
from ..validate import check_finite_number
from ..vectors import SteeringVector
from .base import Method
from .tuning import (
    MAX_TARGET_DEV,
    N_CONFIGS,
    PROTOCOLS,
    Slot,
    alpha_ladder,
    config_grid,
    default_layers,
    tuning_set,
)

__all__ = [
    "SteeringMethod",
    "SCORINGS",
    "icl_activations",
    "draw_icl_item",
    "make_vector",
]

SCORINGS = ("auto", "cached", "full")


def draw_icl_item(
    sources: Sequence[Task],
    i: int,
    k: int,
    rng: random.Random,
    exclude: Collection[str] = (),
) -> tuple[Task, Example, list[Example]]:
    """The ``i``-th source draw ``(task, x, D)``: task ``sources[i mod len]``, k + 1 distinct
    train examples sampled by ``rng`` among those whose ``"task:id"`` is not in ``exclude``
    (the tuning rows, `row_keys`); the last is the query ``x``, the others the
    demonstrations ``D``."""
    task = sources[i % len(sources)]
    pool = [ex for ex in task.train if f"{task.name}:{ex.id}" not in exclude]
    if len(pool) < k + 1:
        raise ValueError(
            f"source task {task.name} has {len(pool)} train rows besides the tuning rows; "
            f"a prompt of k={k} demonstrations and a query needs {k + 1}"
        )
    picks = rng.sample(pool, k + 1)
    return task, picks[-1], picks[:-1]


def icl_activations(
    lm: LanguageModel,
    items: Sequence[tuple[Task, Example, Sequence[Example]]],
    batch_size: int = 16,
    layers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h(Pk(x; D)), h(P0(x)))`` for each (task, x, D): two ``[n, layers, hidden]`` tensors."""
    few = [k_shot(task, x, demos) for task, x, demos in items]
    zero = [zero_shot(task, x) for task, x, _ in items]
    h_k = record_activations(lm, few, layers=layers, batch_size=batch_size)
    h_0 = record_activations(lm, zero, layers=layers, batch_size=batch_size)
    return h_k, h_0


def make_vector(
    lm: LanguageModel, per_layer: torch.Tensor, method: str, params: dict[str, Any]
) -> SteeringVector:
    """A `SteeringVector` over all layers from a ``[n_layers, hidden]`` tensor."""
    return SteeringVector.from_tensor(
        per_layer, model_id=lm.name, n_layers=lm.n_layers, method=method, params=params
    )


class SteeringMethod(Method):
    """A method that steers the zero-shot target run with a fitted vector.

    A subclass's ``_fit`` draws `tuning_rows` first, builds its vector from rows outside
    them (`row_keys`), then calls `tune`; it may tune over its own slots (`slot_steering`,
    `slot_fields`, `adopt`)."""

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        layers: tuple[int, ...] | None = None  # candidate l*; None: default_layers(L)
        alphas: tuple[float, ...] | None = None  # None: the budgeted grid (config_grid)
        alpha_range: tuple[float, ...] = (0.25, 2.0)  # (low, high) of the budgeted alphas
        n_configs: int = N_CONFIGS  # distinct configurations tuned over, unsteered included
        include_unsteered: bool = True  # alpha = 0 in the grid (False: analyses only)
        protocol: str = "source"
        n_tune: int = 32
        positions: str = "last"
        norm_preserving: bool = False
        layer_window: int = 1  # steer l*..l*+w-1, alpha split evenly
        scoring: str = "auto"  # tuning grid: "auto" (cached when exact), "cached", "full"

    op: str = "add"
    needs_vector = True
    #: how `alpha_ladder` spaces the budgeted alphas over ``alpha_range``
    alpha_spacing: ClassVar[str] = "geometric"

    def check_params(self) -> None:
        p = self.params
        if p.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {p.protocol!r}")
        if p.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {p.positions!r}")
        if p.alphas is not None and not p.alphas:
            raise ValueError("alphas must not be empty (None: the budgeted grid)")
        if len(p.alpha_range) != 2 or not 0 < p.alpha_range[0] <= p.alpha_range[1]:
            raise ValueError(
                f"alpha_range must be (low, high) with 0 < low <= high, got {p.alpha_range}"
            )
        if p.n_configs < 2:
            raise ValueError(f"n_configs must be >= 2 (the unsteered model + 1), got {p.n_configs}")
        if p.layer_window < 1:
            raise ValueError("layer_window must be >= 1")
        if p.n_tune < 1:
            raise ValueError("n_tune must be >= 1")
        if p.protocol == "target_dev" and p.n_tune > MAX_TARGET_DEV:
            raise ValueError(
                f"protocol='target_dev' tunes on at most {MAX_TARGET_DEV} labelled target rows; "
                f"got n_tune={p.n_tune}"
            )
        if p.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {p.scoring!r}")
        if p.scoring == "cached" and p.positions != "last":
            raise ValueError("scoring='cached' is exact only with positions='last'")

    @property
    def uses_target_labels(self) -> bool:
        return self.params.protocol == "target_dev"

    # -- steering ---------------------------------------------------------------------------
    def steer_layers(self, lm: LanguageModel, layer: int) -> list[int]:
        return list(range(layer, min(lm.n_layers, layer + self.params.layer_window)))

    def steering(
        self,
        lm: LanguageModel,
        layer: int,
        alpha: float,
        vector: SteeringVector | None = None,
    ) -> AbstractContextManager[Any]:
        """Steer with ``vector`` (default: the fitted one) at l* = ``layer`` (and the
        ``layer_window`` after it, alpha split evenly)."""
        layers = self.steer_layers(lm, layer)
        return steer(
            lm,
            self.vector if vector is None else vector,
            alpha=alpha / len(layers),
            layers=layers,
            positions=self.params.positions,
            norm_preserving=self.params.norm_preserving,
            op=self.op,
        )

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        if self.info["alpha"] == 0:  # tuning kept the unsteered model: no hook at all
            return nullcontext()
        return self.steering(lm, self.info["layer"], self.info["alpha"])

    def eval_scoring(self) -> str:
        if self.info.get("alpha") == 0:  # the unsteered model: zero-shot's own path
            return "full"
        return self.grid_scoring()

    # -- tuning -----------------------------------------------------------------------------
    def tuning_rows(
        self, sources: Sequence[Task], target: Task, seed: int
    ) -> list[tuple[Task, Example]]:
        """`tuning_set` under this method's protocol and ``n_tune`` (`tune` records their ids as
        ``tuning_ids``). Draw them before the vector's rows, and keep those out of them."""
        p = self.params
        return tuning_set(p.protocol, sources, target, p.n_tune, seed)

    def candidate_layers(self, lm: LanguageModel) -> list[int]:
        """The candidate l*: ``layers``, else `default_layers`."""
        return lm.check_layers(list(self.params.layers or default_layers(lm.n_layers)))

    def alpha_ladder(self, count: int) -> list[float]:
        """``count`` budgeted alphas over ``alpha_range`` (`alpha_ladder`)."""
        low, high = self.params.alpha_range
        return alpha_ladder(count, low, high, self.alpha_spacing)

    def slot_steering(
        self, lm: LanguageModel, slot: Slot, alpha: float
    ) -> AbstractContextManager[Any]:
        """The steering of configuration (``slot``, ``alpha``); a slot is a layer here."""
        return self.steering(lm, slot, alpha)  # type: ignore[arg-type]

    def slot_fields(self, slot: Slot) -> dict[str, Any]:
        """What a slot is, as record fields (None: the unsteered model)."""
        return {"layer": slot}

    def adopt(self, lm: LanguageModel, slot: Slot, alpha: float) -> None:
        """Make (``slot``, ``alpha``) the fitted configuration (``self.info``)."""
        self.info.update(self.slot_fields(slot), alpha=alpha, steered=slot is not None)

    def tune(
        self,
        lm: LanguageModel,
        rows: Sequence[tuple[Task, Example]],
        slots: Sequence[Slot] | None = None,
    ) -> None:
        """Choose the configuration on ``rows`` (`tuning_rows`) among `config_grid` over
        ``slots`` (default: `candidate_layers`); the grid, its size, the choice and the wall
        seconds of the choice (``tune_seconds``, part of the fit's ``fit_seconds``) go to
        ``self.info``."""
        t0 = time.perf_counter()
        p = self.params
        slots = list(slots) if slots is not None else self.candidate_layers(lm)
        alphas = None
        if p.alphas is not None:
            alphas = [check_finite_number(a, f"{self.name}: alpha") for a in p.alphas]
        points = config_grid(slots, p.n_configs, self.alpha_ladder, alphas, p.include_unsteered)
        by_task: dict[str, tuple[Task, list[Example]]] = {}
        for task, ex in rows:
            by_task.setdefault(task.name, (task, []))[1].append(ex)
        scoring = self.grid_scoring()
        correct = [0] * len(points)
        margin = [0.0] * len(points)
        errors: dict[int, str] = {}
        n = sum(len(exs) for _, exs in by_task.values())
        for task, exs in by_task.values():
            gold = torch.as_tensor([ex.label for ex in exs])
            for g, scores in enumerate(self.grid_scores(lm, task, exs, points, scoring)):
                if torch.isnan(scores).any():  # NaN log-probs: this point cannot score
                    errors.setdefault(
                        g,
                        f"{lm.name} gave NaN log-probabilities on {task.name} tuning rows at "
                        f"{self.slot_fields(points[g][0])}, alpha {points[g][1]}",
                    )
                    continue
                correct[g] += int((scores.argmax(dim=1) == gold).sum())
                margin[g] += float(scores.gather(1, gold[:, None]).sum())
        grid = [
            {**self.slot_fields(slot), "alpha": alpha, "error": errors[g]}
            if g in errors
            else {
                **self.slot_fields(slot),
                "alpha": alpha,
                "accuracy": correct[g] / n,
                "gold_logp": margin[g] / n,
            }
            for g, (slot, alpha) in enumerate(points)
        ]
        scored = [g for g in range(len(grid)) if "error" not in grid[g]]
        if not scored:
            raise FloatingPointError(
                f"{self.name}: every configuration of the tuning grid gave NaN log-probs "
                f"({grid[0]['error']})"
            )
        # max keeps the first of equal keys: ties go to the earlier point, the unsteered first
        best = max(scored, key=lambda g: (grid[g]["accuracy"], grid[g]["gold_logp"]))
        self.info.update(
            tuning_scoring=scoring,
            protocol=p.protocol,
            tuning_grid=grid,
            tuning_configs=len(points),
            tuning_n=n,
            tuning_ids=[f"{task.name}:{ex.id}" for task, ex in rows],
        )
        self.adopt(lm, *points[best])
        self.record_vector_norm(lm)
        self.info["tune_seconds"] = round(time.perf_counter() - t0, 3)

    def record_vector_norm(self, lm: LanguageModel) -> None:
        """Store the layers actually steered (``info["steered_layers"]``: a ``layer_window``
        is cut at the last block) and the norm of the vector there (``info["vector_norm"]``,
        their root sum of squares), and warn when it is zero: steering then changes nothing,
        whatever layer and alpha the record names."""
        layer = self.info.get("layer")
        if self.vector is None or not (isinstance(layer, int) or layer == "all"):
            return
        steered = self.vector.layer_ids if layer == "all" else self.steer_layers(lm, layer)
        layers = [la for la in steered if la in self.vector.layers]
        norm = float(sum(float(self.vector[la].norm()) ** 2 for la in layers) ** 0.5)
        self.info["vector_norm"] = norm
        self.info["steered_layers"] = layers
        if norm == 0.0:
            warnings.warn(
                f"{self.name}: the steering vector is exactly zero at layer(s) {layers}; the "
                f"steered run equals zero-shot (recorded as vector_norm=0.0)",
                stacklevel=3,
            )

    def grid_scoring(self) -> str:
        """The path the tuning grid is scored by: `castlib.scoring.last_token.SCORING_CACHED` or
        ``"full"`` (see the module docstring)."""
        p = self.params
        if p.scoring == "full" or p.positions != "last":
            return "full"
        return SCORING_CACHED

    def grid_scores(
        self,
        lm: LanguageModel,
        task: Task,
        examples: Sequence[Example],
        points: Sequence[tuple[Slot, float]],
        scoring: str,
    ) -> list[torch.Tensor]:
        """Zero-shot answer log-probs of ``examples`` under each (slot, alpha) point:
        ``[n, n_labels]`` per point, answers outside an example's label space at ``-inf``."""
        prompts = build_prompts(task, examples, None)
        size = self.params.batch_size
        configs = [
            (lambda slot=slot, alpha=alpha: self.config(lm, slot, alpha)) for slot, alpha in points
        ]
        if scoring == SCORING_CACHED:
            out, _ = sweep_scores(lm, prompts, task.labels, configs, size)
        else:
            out = []
            for config in configs:
                with config():
                    out.append(score_prompts(lm, prompts, task.labels, size)[0])
        for scores in out:
            for row, ex in enumerate(examples):
                scores[row, len(task.label_space(ex)) :] = float("-inf")
        return out

    def config(self, lm: LanguageModel, slot: Slot, alpha: float) -> AbstractContextManager[Any]:
        """The context of one grid point: no hook for the unsteered model (slot None)."""
        return nullcontext() if slot is None else self.slot_steering(lm, slot, alpha)
