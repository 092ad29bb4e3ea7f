"""Cross-task in-context learning (Chatterjee et al., ACL 2024): k labelled source
demonstrations under the source's instruction, then the target's zero-shot prompt:

    y_hat = argmax_a log P(" a" | [I_src; D; I_tgt; x])

``demo_choice="random"``: one seeded draw of k demonstrations from a source task, shared by every
query (so its KV cache could be reused); ``"similar"``: for each query x, the k source candidates
whose embeddings e(.) = normalised h_{l_e}(P0(.)) have the highest cosine with e(x). With several
source tasks, the demonstrations of one prompt come from one source (random: a seeded choice;
similar: the task of the single most similar candidate), so each prompt has one instruction.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import torch

from ..models import LanguageModel
from ..prompts import CrossTask, cross_task, zero_shot
from ..record import record_activations
from ..tasks import Example, Task
from .base import Method, example_from_json, example_to_json, task_from_json, task_to_json
from .registry import register, register_preset

__all__ = ["CrossTaskICL"]


@register
class CrossTaskICL(Method):
    name = "cross_task_icl"

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        k: int = 4
        demo_choice: str = "random"
        n_candidates: int = 256
        embed_layer: int | None = None
        prefix_cache: bool = True  # random demos are shared by every query: reuse their KV cache

    def check_params(self) -> None:
        if self.params.demo_choice not in ("random", "similar"):
            raise ValueError("demo_choice must be 'random' or 'similar'")
        if self.params.k < 1:
            raise ValueError("k must be >= 1")
        if self.params.demo_choice == "similar" and self.params.n_candidates < self.params.k:
            raise ValueError(
                f"n_candidates ({self.params.n_candidates}) must be >= k ({self.params.k})"
            )

    def _embed(self, lm: LanguageModel, items: Sequence[tuple[Task, Example]]) -> torch.Tensor:
        acts = record_activations(
            lm,
            [zero_shot(t, ex) for t, ex in items],
            layers=[self.layer_e],
            batch_size=self.params.batch_size,
        )
        return torch.nn.functional.normalize(acts[:, 0], dim=-1)

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        self.layer_e = lm.check_layers(
            [p.embed_layer if p.embed_layer is not None else lm.n_layers // 2]
        )[0]
        small = {t.name: len(t.train) for t in sources if len(t.train) < p.k}
        if small and (p.demo_choice == "similar" or len(small) == len(sources)):
            raise ValueError(
                f"{self.name}: source train pools {small} are smaller than k={p.k}; every "
                f"prompt needs k demonstrations"
            )
        if p.demo_choice == "random":
            task = rng.choice([t for t in sources if t.name not in small])
            self.demos = [(task, ex) for ex in rng.sample(list(task.train), p.k)]
            self.info["selected_ids"] = [f"{t.name}:{ex.id}" for t, ex in self.demos]
            return
        self.candidates = [
            (t, ex)
            for t in sources
            for ex in rng.sample(list(t.train), min(p.n_candidates, len(t.train)))
        ]
        self.cand_e = self._embed(lm, self.candidates)
        self.info["embed_layer"] = self.layer_e

    def prefix_cache(self) -> bool:
        return self.params.prefix_cache and self.params.demo_choice == "random"

    def prompts(self, lm: LanguageModel, target: Task, examples: Sequence[Example]) -> Any:
        if self.params.demo_choice == "random":
            source = self.demos[0][0]
            return CrossTask(source, tuple(ex for _, ex in self.demos))
        query_e = self._embed(lm, [(target, ex) for ex in examples])
        sims = query_e @ self.cand_e.T
        prompts = []
        for row, ex in enumerate(examples):
            order = sims[row].argsort(descending=True).tolist()
            task = self.candidates[order[0]][0]
            demos = [
                self.candidates[i][1] for i in order if self.candidates[i][0].name == task.name
            ]
            # most similar last, nearest to the query
            prompts.append(cross_task(task, demos[: self.params.k][::-1], target, ex))
        return prompts

    def state(self) -> dict[str, Any]:
        pairs = self.demos if self.params.demo_choice == "random" else self.candidates
        tasks = {t.name: task_to_json(t) for t, _ in pairs}
        out: dict[str, Any] = {
            "layer_e": self.layer_e,
            "tasks": tasks,
            "pairs": [[t.name, example_to_json(ex)] for t, ex in pairs],
        }
        if self.params.demo_choice == "similar":
            out["cand_e"] = self.cand_e.tolist()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        tasks = {name: task_from_json(doc) for name, doc in state["tasks"].items()}
        pairs = [(tasks[name], example_from_json(ex)) for name, ex in state["pairs"]]
        self.layer_e = state["layer_e"]
        if self.params.demo_choice == "random":
            self.demos = pairs
        else:
            self.candidates = pairs
            self.cand_e = torch.tensor(state["cand_e"])


register_preset("cross_task_icl_random", "cross_task_icl", demo_choice="random")
register_preset("cross_task_icl_similar", "cross_task_icl", demo_choice="similar")
