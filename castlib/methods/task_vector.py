"""Task vectors (Hendel, Geva & Globerson, EMNLP Findings 2023).

theta_l = mean_i h_l(Pk(x_i; D_i)), the last-token state of n source few-shot prompts (k
source demonstrations and a source query each, drawn outside the tuning rows), is patched into
the target's zero-shot run: at layer l* the last prompt token's state is moved towards it,
h <- (1 - alpha) h + alpha theta_{l*} (``op="replace"``; alpha = 1 replaces it, as the paper
patches; alpha = 0 is the unsteered model). (l*, alpha) are chosen by the spec's tuning
protocols on the shared budget (`castlib.methods.tuning`).

What follows the paper: the vector is the last-token state of a few-shot prompt at one layer,
patched (replaced) into a zero-shot run at the same layer and position, the layer chosen on
held-out rows.

What differs, and why:
- The prompts are *source*-task prompts patched into a *target* task (the paper patches within
  a task): the cross-task transfer being compared.
- theta is the mean over ``n_prompts`` prompts, each with a real source query (the paper
  reads it from one prompt: a demonstration set and a dummy query); the mean lowers its
  variance on a small model.
- The paper sweeps every layer at alpha = 1. Here the search is the shared tuning budget
  (``n_configs``, default 21): the candidate layers (`default_layers`, five over the middle half)
  times replacement weights spaced linearly over ``alpha_range`` = (0.25, 1.0) (four per layer
  with five layers, alpha = 1 always among them), plus the unsteered model, so the task vector
  searches as many configurations as CAST and can decline to steer.
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
from .tuning import row_keys

__all__ = ["TaskVector"]


@register
class TaskVector(SteeringMethod):
    name = "task_vector"
    op = "replace"
    alpha_spacing = "linear"  # replacement weights: (1 - alpha) h + alpha theta

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alpha_range: tuple[float, ...] = (0.25, 1.0)
        k: int = 4
        n_prompts: int = 16

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        rows = self.tuning_rows(sources, target, seed)
        held = row_keys(rows)
        items = [draw_icl_item(sources, i, p.k, rng, held) for i in range(p.n_prompts)]
        prompts = [k_shot(task, x, demos) for task, x, demos in items]
        acts = record_activations(lm, prompts, batch_size=p.batch_size)
        self.vector = make_vector(lm, acts.mean(0), self.name, {"k": p.k, "n_prompts": p.n_prompts})
        self.tune(lm, rows)
