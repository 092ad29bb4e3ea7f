"""Shared machinery of the steering methods: activation extraction and (layer, alpha) tuning.

Tuning (CAST_SPEC step 5) never touches the target's test split. For every candidate layer l
and scale alpha, the tuning set is scored zero-shot with ``alpha * v_l`` added, and the pair
with the highest accuracy wins (ties: the higher mean log-probability of the gold answer, then
the earlier grid point). Two protocols:

    source      held-out examples of the source task(s) (disjoint from those the vector was
                made from), each scored on its own source task: no target labels at all;
    target_dev  at most 32 labelled examples from the target's train pool.

Scoring the grid (``scoring``): with ``positions="last"`` every grid point is scored against
one cached prefix per tuning prompt (`castlib.last_token.sweep_scores`: one prefix pass, then
one token per prompt and grid point), which gives the same predictions as scoring every grid
point in full (``scoring="full"``); ``positions="all"`` always scores in full. The test
evaluation takes the same path. The paths that ran are in the record: ``tuning_scoring`` and
``scoring``.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..evaluate import build_prompts, score_prompts
from ..last_token import SCORING_CACHED, sweep_scores
from ..models import LanguageModel
from ..prompts import k_shot, zero_shot
from ..record import record_activations
from ..steer import steer
from ..tasks import Example, Task
from ..validate import check_finite_number
from ..vectors import SteeringVector
from .base import Method

__all__ = [
    "SteeringMethod",
    "PROTOCOLS",
    "default_layers",
    "icl_activations",
    "tuning_set",
    "make_vector",
]

PROTOCOLS = ("source", "target_dev")
SCORINGS = ("auto", "cached", "full")
MAX_TARGET_DEV = 32


def default_layers(n_layers: int) -> list[int]:
    """Candidate steering layers: five points spread over the middle half of the model."""
    return sorted({min(n_layers - 1, round(n_layers * f)) for f in (0.25, 0.375, 0.5, 0.625, 0.75)})


def draw_icl_item(
    sources: Sequence[Task], i: int, k: int, rng: random.Random, used: set[str]
) -> tuple[Task, Example, list[Example]]:
    """The ``i``-th source draw ``(task, x, D)``: task ``sources[i mod len]``, k + 1 distinct
    train examples sampled by ``rng`` (the last is the query ``x``, the others the
    demonstrations ``D``); their ids are added to ``used`` (kept out of tuning)."""
    task = sources[i % len(sources)]
    picks = rng.sample(list(task.train), k + 1)
    used.update(ex.id for ex in picks)
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


def tuning_rows_per_source(n_tune: int, n_sources: int) -> int:
    """Held-out rows the ``source`` protocol draws from each source task."""
    return max(1, n_tune // n_sources)


def tuning_set(
    protocol: str,
    sources: Sequence[Task],
    target: Task,
    n: int,
    exclude: set[str],
    rng: random.Random,
) -> list[tuple[Task, Example]]:
    """The (task, example) pairs (layer, alpha) are chosen on; never target test rows."""
    if protocol == "source":
        per = tuning_rows_per_source(n, len(sources))
        out = []
        for task in sources:
            pool = [
                ex
                for ex in task.train
                if ex.id not in exclude and f"{task.name}:{ex.id}" not in exclude
            ]
            out += [(task, ex) for ex in rng.sample(pool, min(per, len(pool)))]
        if not out:
            sizes = {t.name: len(t.train) for t in sources}
            raise ValueError(
                f"source protocol: no held-out source rows left to tune on (train sizes "
                f"{sizes}, {len(exclude)} rows used to build the vector); use fewer rows for "
                f"the vector, more source data, or protocol='target_dev'"
            )
        return out
    if protocol == "target_dev":
        pool = list(target.train)
        k = min(n, MAX_TARGET_DEV, len(pool))
        if k == 0:
            raise ValueError(f"target_dev protocol: target {target.name} has no train examples")
        return [(target, ex) for ex in rng.sample(pool, k)]
    raise ValueError(f"unknown tuning protocol {protocol!r}; choose from {PROTOCOLS}")


class SteeringMethod(Method):
    """A method that steers the zero-shot target run with a fitted vector."""

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        layers: tuple[int, ...] | None = None  # candidate l*; None: default_layers(L)
        alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
        protocol: str = "source"
        n_tune: int = 32
        positions: str = "last"
        norm_preserving: bool = False
        layer_window: int = 1  # steer l*..l*+w-1, alpha split evenly
        scoring: str = "auto"  # tuning grid: "auto" (cached when exact), "cached", "full"

    op: str = "add"
    needs_vector = True

    def check_params(self) -> None:
        p = self.params
        if p.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {p.protocol!r}")
        if p.positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {p.positions!r}")
        if not p.alphas:
            raise ValueError("alphas must not be empty")
        if p.layer_window < 1:
            raise ValueError("layer_window must be >= 1")
        if p.n_tune < 1:
            raise ValueError("n_tune must be >= 1")
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

    def steering(self, lm: LanguageModel, layer: int, alpha: float) -> AbstractContextManager[Any]:
        layers = self.steer_layers(lm, layer)
        return steer(
            lm,
            self.vector,
            alpha=alpha / len(layers),
            layers=layers,
            positions=self.params.positions,
            norm_preserving=self.params.norm_preserving,
            op=self.op,
        )

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        return self.steering(lm, self.info["layer"], self.info["alpha"])

    # -- tuning -----------------------------------------------------------------------------
    def tune(
        self,
        lm: LanguageModel,
        sources: Sequence[Task],
        target: Task,
        exclude: set[str],
        rng: random.Random,
        layers: Sequence[int] | None = None,
        alphas: Sequence[float] | None = None,
    ) -> None:
        """Choose (l*, alpha) by the configured protocol; stores the grid in ``self.info``."""
        p = self.params
        candidates = lm.check_layers(list(layers or p.layers or default_layers(lm.n_layers)))
        alphas = [check_finite_number(a, f"{self.name}: alpha") for a in (alphas or p.alphas)]
        tune = tuning_set(p.protocol, sources, target, p.n_tune, exclude, rng)
        by_task: dict[str, tuple[Task, list[Example]]] = {}
        for task, ex in tune:
            by_task.setdefault(task.name, (task, []))[1].append(ex)
        points = [(layer, alpha) for layer in candidates for alpha in alphas]
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
                        f"layer {points[g][0]}, alpha {points[g][1]}",
                    )
                    continue
                correct[g] += int((scores.argmax(dim=1) == gold).sum())
                margin[g] += float(scores.gather(1, gold[:, None]).sum())
        grid = [
            {"layer": layer, "alpha": alpha, "error": errors[g]}
            if g in errors
            else {
                "layer": layer,
                "alpha": alpha,
                "accuracy": correct[g] / n,
                "gold_logp": margin[g] / n,
            }
            for g, (layer, alpha) in enumerate(points)
        ]
        scored = [g for g in grid if "error" not in g]
        if not scored:
            raise FloatingPointError(
                f"{self.name}: every (layer, alpha) of the tuning grid gave NaN log-probs "
                f"({grid[0]['error']})"
            )
        best = max(scored, key=lambda g: (g["accuracy"], g["gold_logp"]))
        self.info.update(
            tuning_scoring=scoring,
            layer=best["layer"],
            alpha=best["alpha"],
            protocol=p.protocol,
            tuning_grid=grid,
            tuning_n=len(tune),
        )
        self.record_vector_norm(lm)

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

    def eval_scoring(self) -> str:
        return self.grid_scoring()

    def grid_scoring(self) -> str:
        """The path the tuning grid is scored by: `castlib.last_token.SCORING_CACHED` or
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
        points: Sequence[tuple[int, float]],
        scoring: str,
    ) -> list[torch.Tensor]:
        """Zero-shot answer log-probs of ``examples`` under each (layer, alpha) point:
        ``[n, n_labels]`` per point, answers outside an example's label space at ``-inf``."""
        prompts = build_prompts(task, examples, None)
        size = self.params.batch_size
        if scoring == SCORING_CACHED:
            configs = [
                (lambda layer=layer, alpha=alpha: self.steering(lm, layer, alpha))
                for layer, alpha in points
            ]
            out, _ = sweep_scores(lm, prompts, task.labels, configs, size)
        else:
            out = []
            for layer, alpha in points:
                with self.steering(lm, layer, alpha):
                    out.append(score_prompts(lm, prompts, task.labels, size)[0])
        for scores in out:
            for row, ex in enumerate(examples):
                scores[row, len(task.label_space(ex)) :] = float("-inf")
        return out
