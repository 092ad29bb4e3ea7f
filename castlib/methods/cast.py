"""CAST: Cross-task Activation Steering Transfer (Tang et al., 2025, arXiv:2507.13236).

Following CAST_SPEC "The method":

1. Candidate embeddings. For each source candidate x (``n_candidates`` per source task, pooled),
   e(x) = h_{l_e}(P0(x)) / ||h_{l_e}(P0(x))||, with l_e = L // 2 by default (``embed_layer``).
   Unlabelled target queries (``n_queries`` inputs of the target's train pool; never its test
   split) are embedded the same way.
2. Selection of m samples S (``selection``: ``cast`` = kNN graph over candidates + queries,
   T-step diffusion, greedy coverage F(S) = sum_q max_{s in S} A_T[q, s] with diversity penalty
   gamma * max_{s in S} cos(e_u, e_s); or ``random``/``similarity``/``influence``/``diversity``),
   see `castlib.selection`.
3. Contrastive representation-enhanced activations. For each s in S with its gold answer,
   D_s = k demonstrations drawn (seeded) from the selected samples of the same source task
   without s (topped up from that task's candidates when fewer than k are selected), and
       delta_l(s) = h_l(Pk(s; D_s)) - h_l(P0(s)),     v_l = mean_s delta_l(s)     (``mean``)
   ``pca``: the first principal direction of {delta_l(s)}, sign-aligned with the mean and scaled
   to its norm; ``fewshot_only``: v_l = mean_s h_l(Pk(s; D_s)), applied as a replacement target
   (h <- (1 - alpha) h + alpha v_l). With several source tasks and ``source_weighting =
   "similarity"``, v_l = sum_t w_t v_l^(t) with w = softmax_t(cos(mean_x h_{l_e}(P0(x_t)),
   mean_q h_{l_e}(P0(q))) / tau).
4. Steering: the target runs zero-shot with alpha * v_l added at l* (``layer_window`` > 1 steers
   l*..l*+w-1 with alpha split evenly), at the last prompt token (or ``positions="all"``),
   optionally norm-preserving.
5. (l*, alpha) are chosen by the ``source`` (default) or ``target_dev`` protocol
   (`castlib.methods.steering`) on the budget every steering method shares: ``n_configs``
   (default 21) distinct configurations, the unsteered model (alpha = 0, kept on ties) and the
   candidate layers (five over the middle half) x alphas geometric over ``alpha_range`` =
   (0.25, 2.0) (four per layer: 0.25, 0.5, 1, 2), on ``n_tune`` tuning rows drawn before the
   candidates and never among them (the same rows for every method with the same seed).
   The spec leaves the grid open; it is sized so that no baseline searches fewer
   configurations than CAST, and includes alpha = 0 so tuning can decline to steer.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection
from typing import Any

import torch

from ..analysis import first_principal_direction
from ..models import LanguageModel
from ..prompts import zero_shot
from ..record import record_activations
from ..selection import SELECTION_METHODS, select
from ..tasks import Example, Task
from .registry import register
from .steering import SteeringMethod, icl_activations, make_vector, row_keys

__all__ = ["CAST", "CONTRASTS", "SelectionParams"]

CONTRASTS = ("mean", "pca", "fewshot_only")


@dataclasses.dataclass(frozen=True)
class SelectionParams:
    """CAST's steps 1-2 (which source samples to use), defined once: `CAST`'s parameters and
    those of the adapter methods trained on CAST's selection (`castlib.methods.lora`) share
    them. The diversity weight is CAST's ``gamma`` (the adapters' ``selection_gamma``, since
    KaSA's own ``gamma`` is a regulariser).

    m: samples selected; selection: `castlib.selection.SELECTION_METHODS`; n_candidates: source
    candidates drawn per source task; n_queries: unlabelled target queries (0: none); embed_layer:
    l_e (None: L // 2); graph_k, diffusion_steps: the kNN graph and its diffusion steps T.
    """

    m: int = 32
    selection: str = "cast"
    n_candidates: int = 256
    n_queries: int = 64
    embed_layer: int | None = None
    graph_k: int = 10
    diffusion_steps: int = 2


@register
class CAST(SteeringMethod):
    """CAST (see the module docstring for the math)."""

    name = "cast"

    @dataclasses.dataclass(frozen=True)
    class Params(SelectionParams, SteeringMethod.Params):
        k: int = 4
        contrast: str = "mean"
        gamma: float = 0.5  # the diversity weight of selection "cast"
        source_weighting: str = "none"
        tau: float = 0.1

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        if p.selection not in SELECTION_METHODS:
            raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {p.selection!r}")
        if p.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {p.contrast!r}")
        if p.source_weighting not in ("none", "similarity"):
            raise ValueError("source_weighting must be 'none' or 'similarity'")
        if p.m < 1 or p.k < 0 or p.n_candidates < p.m:
            raise ValueError(f"need m >= 1, k >= 0 and n_candidates >= m (got {p})")
        if p.k == 0 and p.contrast != "fewshot_only":
            raise ValueError(
                f"k=0 with contrast={p.contrast!r}: with no demonstrations Pk(s) = P0(s), so every "
                f"delta and the vector are exactly zero; use k >= 1"
            )
        if p.n_queries < 0 or p.graph_k < 1 or p.diffusion_steps < 0 or p.gamma < 0:
            raise ValueError(
                f"need n_queries >= 0, graph_k >= 1, diffusion_steps >= 0 and gamma >= 0 "
                f"(got {p.n_queries}, {p.graph_k}, {p.diffusion_steps}, {p.gamma})"
            )
        if p.tau <= 0:
            raise ValueError("tau must be > 0")

    @property
    def op(self) -> str:  # type: ignore[override]
        return "replace" if self.params.contrast == "fewshot_only" else "add"

    def _embed(
        self, lm: LanguageModel, items: list[tuple[Task, Example]], layer: int
    ) -> torch.Tensor:
        prompts = [zero_shot(task, ex) for task, ex in items]
        acts = record_activations(lm, prompts, layers=[layer], batch_size=self.params.batch_size)
        return acts[:, 0]

    def draw(
        self,
        sources: list[Task],
        target: Task,
        rng: random.Random,
        exclude: Collection[str] = (),
    ) -> tuple[list[tuple[Task, Example]], list[Example]]:
        """Step 1's draws from ``rng`` in a fixed order: the candidates of each source task
        (pooled), then ``n_queries`` unlabelled inputs of the target's train pool (never its
        test split).

        Each source gives ``min(n_candidates, rows not in exclude)`` candidates (recorded as
        ``info["n_candidates_effective"]``); ``exclude`` (``"task:id"`` keys: the tuning rows,
        `castlib.methods.steering.row_keys`) stays free for tuning."""
        p = self.params
        candidates: list[tuple[Task, Example]] = []
        effective: dict[str, int] = {}
        for task in sources:
            pool = [ex for ex in task.train if f"{task.name}:{ex.id}" not in exclude]
            n = min(p.n_candidates, len(pool))
            if n < 2:
                held = len(task.train) - len(pool)
                raise ValueError(
                    f"source task {task.name} has {len(task.train)} train examples: CAST needs at "
                    f"least 2 candidates{f' plus {held} held out for tuning' if held else ''}"
                )
            effective[task.name] = n
            candidates += [(task, ex) for ex in rng.sample(pool, n)]
        self.info["n_candidates_effective"] = effective
        if len(candidates) < p.m:
            raise ValueError(
                f"only {len(candidates)} source candidates ({effective}) for m={p.m}; lower m"
            )
        queries = list(target.train)
        queries = rng.sample(queries, min(p.n_queries, len(queries))) if p.n_queries > 0 else []
        return candidates, queries

    def embed(
        self,
        lm: LanguageModel,
        candidates: list[tuple[Task, Example]],
        target: Task,
        queries: list[Example],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Step 1: zero-shot states at l_e of the candidates and of the target queries
        (``[n, hidden]`` each; None without queries); sets ``info["embed_layer"]``."""
        p = self.params
        l_e = lm.check_layers([p.embed_layer if p.embed_layer is not None else lm.n_layers // 2])[0]
        self.info["embed_layer"] = l_e
        cand_h = self._embed(lm, candidates, l_e)
        query_h = self._embed(lm, [(target, q) for q in queries], l_e) if queries else None
        return cand_h, query_h

    def choose(self, cand_h: torch.Tensor, query_h: torch.Tensor | None, seed: int) -> list[int]:
        """Step 2: indices of the m selected candidates (`castlib.selection.select`)."""
        p = self.params
        return select(
            torch.nn.functional.normalize(cand_h, dim=-1),
            p.m,
            method=p.selection,
            queries=None if query_h is None else torch.nn.functional.normalize(query_h, dim=-1),
            k=p.graph_k,
            steps=p.diffusion_steps,
            gamma=p.gamma,
            seed=seed,
        )

    def select_samples(
        self,
        lm: LanguageModel,
        sources: list[Task],
        target: Task,
        rng: random.Random,
        seed: int,
        exclude: Collection[str] = (),
    ) -> tuple[
        list[tuple[Task, Example]], list[tuple[Task, Example]], torch.Tensor, torch.Tensor | None
    ]:
        """Steps 1-2: ``(selected, candidates, candidate states, query states)``; the random
        draws come from ``rng`` in a fixed order (candidates per source, then queries)."""
        candidates, queries = self.draw(sources, target, rng, exclude)
        cand_h, query_h = self.embed(lm, candidates, target, queries)
        chosen = self.choose(cand_h, query_h, seed)
        return [candidates[i] for i in chosen], candidates, cand_h, query_h

    def extract(
        self,
        lm: LanguageModel,
        sources: list[Task],
        selected: list[tuple[Task, Example]],
        candidates: list[tuple[Task, Example]],
        cand_h: torch.Tensor,
        query_h: torch.Tensor | None,
        rng: random.Random,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Step 3: the per-layer vector ``[L, hidden]`` (source-weighted) and the weights."""
        p = self.params
        # contrastive ICL activations: demos from the same task's selected samples
        items = []
        for task, s in selected:
            same = [ex for t, ex in selected if t.name == task.name and ex.id != s.id]
            demos = rng.sample(same, min(p.k, len(same)))
            if len(demos) < p.k:
                extra = [
                    ex
                    for t, ex in candidates
                    if t.name == task.name and ex.id != s.id and ex not in demos
                ]
                demos += rng.sample(extra, min(p.k - len(demos), len(extra)))
            items.append((task, s, demos))
        h_k, h_0 = icl_activations(lm, items, batch_size=p.batch_size)
        per_source = {}
        for task in sources:
            rows = [i for i, (t, _, _) in enumerate(items) if t.name == task.name]
            if rows:
                per_source[task.name] = self._contrast(h_k[rows], h_0[rows])
        weights = self._source_weights(sources, per_source, candidates, cand_h, query_h)
        vec = sum(weights[name] * v for name, v in per_source.items())
        return vec, weights

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        rng = random.Random(seed)
        rows = self.tuning_rows(sources, target, seed)  # drawn first, kept out of the candidates
        # 1-2. candidate embeddings and selection
        selected, candidates, cand_h, query_h = self.select_samples(
            lm, sources, target, rng, seed, row_keys(rows)
        )
        # 3. contrastive representation-enhanced activations
        vec, weights = self.extract(lm, sources, selected, candidates, cand_h, query_h, rng)
        self.vector = make_vector(lm, vec, self.name, self._vector_params())
        self.info.update(
            selected_ids=[f"{t.name}:{ex.id}" for t, ex in selected],
            source_weights=weights,
        )
        # 5. (l*, alpha)
        self.tune(lm, rows)

    def _contrast(self, h_k: torch.Tensor, h_0: torch.Tensor) -> torch.Tensor:
        """Per-layer vector ``[L, hidden]`` from few-shot/zero-shot states ``[n, L, hidden]``."""
        contrast = self.params.contrast
        if contrast == "fewshot_only":
            return h_k.mean(0)
        deltas = h_k - h_0
        mean = deltas.mean(0)
        if contrast == "mean":
            return mean
        out = torch.empty_like(mean)
        for layer in range(mean.shape[0]):
            d = first_principal_direction(deltas[:, layer], align_with=mean[layer])
            out[layer] = d / d.norm().clamp_min(1e-12) * mean[layer].norm()
        return out

    def _source_weights(
        self,
        sources: list[Task],
        per_source: dict[str, torch.Tensor],
        candidates: list[tuple[Task, Example]],
        cand_h: torch.Tensor,
        query_h: torch.Tensor | None,
    ) -> dict[str, float]:
        names = list(per_source)
        if self.params.source_weighting == "none" or len(names) == 1 or query_h is None:
            return {name: 1.0 / len(names) for name in names}
        target_mean = query_h.mean(0)
        sims = []
        for name in names:
            rows = [i for i, (t, _) in enumerate(candidates) if t.name == name]
            sims.append(torch.cosine_similarity(cand_h[rows].mean(0), target_mean, dim=0))
        w = torch.softmax(torch.stack(sims) / self.params.tau, dim=0)
        return {name: float(x) for name, x in zip(names, w, strict=True)}

    def _vector_params(self) -> dict[str, Any]:
        p = dataclasses.asdict(self.params)
        p.pop("data_dir", None)
        return p
