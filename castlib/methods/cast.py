"""CAST: Cross-task Activation Steering Transfer (Tang et al., 2025, arXiv:2507.13236).

What it follows: CAST_SPEC "The method" (the paper's body is not available, so the spec is the
reference definition). Step by step:

1. Candidate embeddings. For each source candidate x (``n_candidates`` per source task, pooled),
   h(x) = h_{l_e}(text(x)), with l_e = L // 2 by default (``embed_layer``) and text(x) = P0(x)
   (``embed_text="prompt"``, the spec's default) or the bare input of x (``embed_text="input"``:
   the example's field texts and answer options, one per line, without the task instruction,
   role names, option letters or answer prefix; `input_text`). Unlabelled target queries
   (``n_queries`` inputs of the target's train pool; never its test split) are embedded the same
   way. Each task's states (every source task's, and the target's) are centred on that task's
   mean before L2-normalising, e(x) = (h(x) - mu_t) / ||h(x) - mu_t|| (``center="per_task"``,
   the spec's default; ``"none"`` only normalises): the instruction template's shared offset
   would otherwise dominate the cosine.
2. Selection of m samples S (``selection``: ``cast`` = every target query linked to its
   ``graph_k`` nearest candidates and every candidate to its ``graph_k`` nearest other
   candidates, symmetrised; T-step diffusion; greedy coverage
   F(S) = (1/|Q|) sum_q max_{s in S} A_T[q, s] with diversity penalty
   gamma * max_{s in S} cos(e_u, e_s); or ``random``/``similarity``/``influence``/
   ``diversity``), see `castlib.selection`. The selection log (per pick: the chosen sample, its
   coverage gain, diversity penalty and objective; the graph's query-candidate edges, the share
   of target queries the selection reaches and the coverage curve F after each pick) is
   ``info["selection_log"]`` and so part of the record, and the three diagnostics are also
   top-level record fields (``selection_query_candidate_edges``,
   ``selection_share_queries_reached``, ``selection_coverage_curve``). A ``cast`` selection that
   reaches no query is refused with an error.
3. Contrastive representation-enhanced activations. For each s in S with its gold answer,
   D_s = k demonstrations drawn (seeded) from the selected samples of the same source task
   without s (topped up from that task's candidates when fewer than k are selected), and
       delta_l(s) = h_l(Pk(s; D_s)) - h_l(P0(s)).
   The samples are pooled with weights pi_s (sum 1):
       ``pooling="samples"`` (default, the spec): pi_s = 1/|S|, so v_l = mean_{s in S} delta_l(s)
           and a source contributes in proportion to how many samples selection took from it;
       ``pooling="sources"``: every source task with n_t selected samples gets weight 1/T
           (T tasks with selected samples), pi_s = 1/(T n_t): v_l = mean_t mean_{s in S_t} delta_l(s).
   Contrasts: ``mean``: v_l = sum_s pi_s delta_l(s); ``pca``: the first principal direction u_l of
   the *uncentred* weighted deltas (the first right singular vector of the rows
   sqrt(pi_s) delta_l(s), no mean subtracted, so a strong common shift is followed rather than
   removed), sign-aligned so that <u_l, mean_l> > 0 and scaled to the mean's norm,
   v_l = ||mean_l|| u_l; ``fewshot_only``: v_l = sum_s pi_s h_l(Pk(s; D_s)), applied as a
   replacement target (h <- (1 - alpha) h + alpha v_l). With several source tasks and
   ``source_weighting = "similarity"``, the task weights are tilted by the similarity to the
   target: w_t proportional to b_t exp(c_t / tau), b_t the pooling weight of task t (n_t/|S| or
   1/T) and c_t = cos(mean_x h_{l_e}(text(x_t)), mean_q h_{l_e}(text(q))); pi_s = w_t / n_t. With
   ``pooling="sources"`` this is the spec's softmax_t(c_t / tau).
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

Where it differs from the spec's text, and why:
- The coverage objective is the spec's sum over target nodes divided by their number (issue 20):
  the same gamma then trades the same share of coverage against redundancy whatever the number
  of queries; the spec's sum with weight gamma' is this objective with gamma = gamma' / |Q|.
  The default gamma = 0.5 / 64 (`castlib.selection.DEFAULT_GAMMA`) is the spec's 0.5 at its
  default 64 target queries.
- The demonstrations of s come from the selected samples of s's own source task (the spec says
  "drawn from S without s"): Pk(s; D) is an in-task prompt under s's instruction, and a
  demonstration of another task under that instruction would make it a cross-task prompt.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection, Sequence
from typing import Any

import torch

from ..analysis import first_principal_direction
from ..models import LanguageModel
from ..prompts import zero_shot
from ..record import record_activations
from ..selection import CENTERINGS, DEFAULT_GAMMA, SELECTION_METHODS, select_with_log
from ..tasks import Example, Task
from .registry import register
from .steering import SteeringMethod, icl_activations, make_vector
from .tuning import row_keys

__all__ = ["CAST", "CONTRASTS", "EMBED_TEXTS", "POOLINGS", "SelectionParams", "input_text"]

CONTRASTS = ("mean", "pca", "fewshot_only")
#: What CAST embeds for selection: the zero-shot prompt P0(x) or the bare input (`input_text`).
EMBED_TEXTS = ("prompt", "input")
#: How the deltas of several source tasks are pooled (module docstring, step 3).
POOLINGS = ("samples", "sources")


def input_text(task: Task, example: Example) -> str:
    """The content of an example without its prompt format: the field texts in the task's field
    order, then (multiple choice) the answer options, one per line; no instruction, role names
    (``Text:``), option letters or answer prefix."""
    lines = [example.fields[field] for field in task.fields]
    return "\n".join([*lines, *(example.options or ())])


@dataclasses.dataclass(frozen=True)
class SelectionParams:
    """CAST's steps 1-2 (which source samples to use), defined once: `CAST`'s parameters and
    those of the adapter methods trained on CAST's selection (`castlib.methods.adapters`) share
    them. The diversity weight is CAST's ``gamma`` (the adapters' ``selection_gamma``, since
    KaSA's own ``gamma`` is a regulariser).

    m: samples selected; selection: `castlib.selection.SELECTION_METHODS`; n_candidates: source
    candidates drawn per source task; n_queries: unlabelled target queries (0: none); embed_layer:
    l_e (None: L // 2); graph_k, diffusion_steps: the kNN graph and its diffusion steps T;
    embed_text: what is embedded, `EMBED_TEXTS` (``"prompt"``: P0(x), the spec's; ``"input"``:
    `input_text`); center: `castlib.selection.CENTERINGS` (``"per_task"``: each task's states
    centred on its mean before normalising, the spec's; ``"none"``: the ablation).
    """

    m: int = 32
    selection: str = "cast"
    n_candidates: int = 256
    n_queries: int = 64
    embed_layer: int | None = None
    graph_k: int = 10
    diffusion_steps: int = 2
    embed_text: str = "prompt"
    center: str = "per_task"


@register
class CAST(SteeringMethod):
    """CAST (see the module docstring for the math)."""

    name = "cast"

    @dataclasses.dataclass(frozen=True)
    class Params(SelectionParams, SteeringMethod.Params):
        k: int = 4
        contrast: str = "mean"
        gamma: float = DEFAULT_GAMMA  # diversity weight of selection "cast" (0.5 / 64)
        source_weighting: str = "none"
        tau: float = 0.1
        pooling: str = "samples"  # POOLINGS: weight per selected sample, or per source task

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        if p.selection not in SELECTION_METHODS:
            raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {p.selection!r}")
        if p.contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {p.contrast!r}")
        if p.source_weighting not in ("none", "similarity"):
            raise ValueError("source_weighting must be 'none' or 'similarity'")
        if p.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {p.pooling!r}")
        if p.center not in CENTERINGS:
            raise ValueError(f"center must be one of {CENTERINGS}, got {p.center!r}")
        if p.embed_text not in EMBED_TEXTS:
            raise ValueError(f"embed_text must be one of {EMBED_TEXTS}, got {p.embed_text!r}")
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
        text = zero_shot if self.params.embed_text == "prompt" else input_text
        prompts = [text(task, ex) for task, ex in items]
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
        `castlib.methods.tuning.row_keys`) stays free for tuning."""
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
        """Step 1: states at l_e of the candidates and of the target queries (``[n, hidden]``
        each; None without queries) for the ``embed_text`` texts; sets ``info["embed_layer"]``."""
        p = self.params
        l_e = lm.check_layers([p.embed_layer if p.embed_layer is not None else lm.n_layers // 2])[0]
        self.info["embed_layer"] = l_e
        cand_h = self._embed(lm, candidates, l_e)
        query_h = self._embed(lm, [(target, q) for q in queries], l_e) if queries else None
        return cand_h, query_h

    def choose(
        self,
        cand_h: torch.Tensor,
        query_h: torch.Tensor | None,
        seed: int,
        candidate_tasks: Sequence[str] | None = None,
        query_task: str = "target",
    ) -> list[int]:
        """Step 2: indices of the m selected candidates (`castlib.selection.select_with_log` on
        the raw states, centred per task there: ``candidate_tasks`` names each candidate's
        source task, None: one task); its log (steps naming candidate indices) is stored as
        ``info["selection_log"]`` and its diagnostics as ``info["selection_*"]``."""
        p = self.params
        chosen, log = select_with_log(
            cand_h,
            p.m,
            method=p.selection,
            queries=query_h,
            k=p.graph_k,
            steps=p.diffusion_steps,
            gamma=p.gamma,
            seed=seed,
            candidate_tasks=candidate_tasks,
            query_task=query_task,
            center=p.center,
        )
        self.info["selection_log"] = log
        self.info["selection_query_candidate_edges"] = log["n_query_candidate_edges"]
        self.info["selection_share_queries_reached"] = log["share_targets_reached"]
        self.info["selection_coverage_curve"] = log["coverage_curve"]
        return chosen

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
        draws come from ``rng`` in a fixed order (candidates per source, then queries). Sets
        ``info["selection_log"]`` (`castlib.selection.select_with_log`'s log, each step's ``id``
        the chosen sample as ``"task:id"``)."""
        candidates, queries = self.draw(sources, target, rng, exclude)
        cand_h, query_h = self.embed(lm, candidates, target, queries)
        tasks = [task.name for task, _ in candidates]
        chosen = self.choose(cand_h, query_h, seed, tasks, target.name)
        for step in self.info["selection_log"]["steps"]:
            task, ex = candidates[step["id"]]
            step["id"] = f"{task.name}:{ex.id}"
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
        """Step 3: the per-layer vector ``[L, hidden]`` pooled over the selected samples with
        the weights of ``pooling`` (and ``source_weighting``), and the task weights w_t."""
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
        names = [t.name for t, _, _ in items]
        weights = self._source_weights(sources, names, candidates, cand_h, query_h)
        counts = {name: names.count(name) for name in weights}
        pi = torch.tensor([weights[name] / counts[name] for name in names], dtype=torch.float64)
        self.info["source_counts"] = counts
        return self._contrast(h_k, h_0, pi), weights

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

    def _contrast(self, h_k: torch.Tensor, h_0: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """Per-layer vector ``[L, hidden]`` from few-shot/zero-shot states ``[n, L, hidden]`` and
        sample weights ``pi`` (``[n]``, sum 1): step 3 of the module docstring."""
        contrast = self.params.contrast
        w = pi.to(torch.float64)[:, None, None]
        if contrast == "fewshot_only":
            return (w * h_k.to(torch.float64)).sum(0).to(h_k.dtype)
        deltas = h_k.to(torch.float64) - h_0.to(torch.float64)
        mean = (w * deltas).sum(0)
        if contrast == "mean":
            return mean.to(h_k.dtype)
        rows = w.sqrt() * deltas  # uncentred second moment sum_s pi_s delta delta^T = rows^T rows
        out = torch.empty_like(mean)
        for layer in range(mean.shape[0]):
            u = first_principal_direction(rows[:, layer], align_with=mean[layer], center=False)
            out[layer] = u * mean[layer].norm()
        return out.to(h_k.dtype)

    def _source_weights(
        self,
        sources: list[Task],
        names: list[str],
        candidates: list[tuple[Task, Example]],
        cand_h: torch.Tensor,
        query_h: torch.Tensor | None,
    ) -> dict[str, float]:
        """Task weights w_t (sum 1) of the source tasks with selected samples (``names``: the
        task of each selected sample): the ``pooling`` weights b_t, tilted by exp(c_t / tau)
        with ``source_weighting="similarity"`` (module docstring, step 3)."""
        tasks = [t.name for t in sources if t.name in names]
        if self.params.pooling == "samples":
            base = torch.tensor([names.count(t) / len(names) for t in tasks], dtype=torch.float64)
        else:
            base = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
        if self.params.source_weighting == "none" or len(tasks) == 1 or query_h is None:
            return {name: float(x) for name, x in zip(tasks, base, strict=True)}
        target_mean = query_h.mean(0)
        sims = []
        for name in tasks:
            rows = [i for i, (t, _) in enumerate(candidates) if t.name == name]
            sims.append(torch.cosine_similarity(cand_h[rows].mean(0), target_mean, dim=0))
        logits = base.log() + torch.stack(sims).to(torch.float64) / self.params.tau
        w = torch.softmax(logits, dim=0)
        return {name: float(x) for name, x in zip(tasks, w, strict=True)}

    def _vector_params(self) -> dict[str, Any]:
        p = dataclasses.asdict(self.params)
        p.pop("data_dir", None)
        return p
