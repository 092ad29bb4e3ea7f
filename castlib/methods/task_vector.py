"""Task vectors (Hendel, Geva & Globerson, EMNLP Findings 2023).

theta_l = mean_i h_l(Pk(x_i; D_i)), the last-token state of n source few-shot prompts (k
source demonstrations and a source query each), is patched into the target's zero-shot run:
at layer l* the last prompt token's state is replaced, h <- theta_{l*} (``op="replace"``,
alpha = 1). l* is chosen by the spec's tuning protocols.
"""

from __future__ import annotations

import dataclasses
import random

from ..models import LanguageModel
from ..prompts import k_shot
from ..record import record_activations
from ..tasks import Task
from .registry import register
from .steering import SteeringMethod, draw_icl_item, make_vector

__all__ = ["TaskVector"]


@register
class TaskVector(SteeringMethod):
    name = "task_vector"
    op = "replace"

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alphas: tuple[float, ...] = (1.0,)
        k: int = 4
        n_prompts: int = 16

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        used: set[str] = set()
        items = [draw_icl_item(sources, i, p.k, rng, used) for i in range(p.n_prompts)]
        prompts = [k_shot(task, x, demos) for task, x, demos in items]
        acts = record_activations(lm, prompts, batch_size=p.batch_size)
        self.vector = make_vector(lm, acts.mean(0), self.name, {"k": p.k, "n_prompts": p.n_prompts})
        self.tune(lm, sources, target, used, rng)
