"""In-task few-shot ICL: k labelled target demonstrations D (from the target's train pool,
seeded) before every query, y_hat = argmax_a log P(" a" | Pk(x; D)).

It uses target labels, so it is a reference (what low-resource practice can reach with k labelled
examples in the prompt), not a competitor of the label-free transfer methods.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from ..models import LanguageModel
from ..prompts import FewShot
from ..tasks import Task
from .base import Method
from .registry import register
from .saving import example_from_json, example_to_json

__all__ = ["FewShotMethod"]


@register
class FewShotMethod(Method):
    name = "few_shot"

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        k: int = 4
        prefix_cache: bool = True  # reuse the shared demonstrations' KV cache

    def check_params(self) -> None:
        if self.params.k < 1:
            raise ValueError("k must be >= 1")

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        pool = list(target.train)
        if len(pool) < self.params.k:
            raise ValueError(f"target {target.name} has {len(pool)} train examples < k")
        self.demos = tuple(random.Random(seed).sample(pool, self.params.k))
        self.info["selected_ids"] = [f"{target.name}:{d.id}" for d in self.demos]

    @property
    def uses_target_labels(self) -> bool:
        return True

    def prefix_cache(self) -> bool:
        return self.params.prefix_cache

    def prompt_builder(self, lm: LanguageModel, target: Task) -> Any:
        return FewShot(self.demos)

    def state(self) -> dict[str, Any]:
        return {"demos": [example_to_json(d) for d in self.demos]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.demos = tuple(example_from_json(d) for d in state["demos"])
