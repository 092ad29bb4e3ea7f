"""The one evaluation path of fitted methods, alone (`Method.evaluate`) or several together
(`evaluate_methods`), and the result record's parts that evaluation fills in.

A method is evaluated in one of two ways, by its `Method.eval_scoring`:

* ``"full"``: inside ``method.applied(lm)`` (its steering hooks or adapter),
  `castlib.scoring.evaluation.evaluate` scores the method's prompts, with the demonstration
  prefix cached where `Method.prefix_cache` says so;
* `castlib.scoring.last_token.SCORING_CACHED`: the method steers the last prompt position only
  (CAST, task vectors, function vectors, their variants and target_dev presets, the unsteered
  model), which leaves every earlier position as the unsteered model computes it. Methods of
  that kind with the same evaluation prompts and ``batch_size`` need each prompt's prefix only
  once: they are scored together in one `castlib.scoring.evaluation.evaluate_sweep` (one prefix
  pass per prompt, then one one-token pass per method). A method alone in its group is a sweep
  of one configuration, which `evaluate_sweep` scores on the plain pass when the answers are
  single tokens (``scoring`` says which path ran).

`evaluate_methods` is the path; `Method.evaluate` takes it for one method. Each record of several
methods evaluated together equals the one `Method.evaluate` gives up to float rounding of the
scores (same predictions), plus ``eval_shared``. Ablation and sensitivity grids (notebooks 04
and 06), which fit many variants of CAST and score each on the same test split, cost one test
pass plus one token per variant this way instead of one test pass per variant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch

from ..models import LanguageModel
from ..profiling import profile
from ..scoring import EvalResult, build_prompts, evaluate, evaluate_sweep, select_examples
from ..scoring.last_token import SCORING_CACHED
from ..tasks import Example, Task

__all__ = [
    "RESULT_FIELDS",
    "evaluate_methods",
    "measure",
    "compact_predictions",
    "Evaluable",
]

#: Keys of every result record (methods may add more).
RESULT_FIELDS = (
    "model",
    "dtype",
    "method",
    "params",
    "seed",
    "sources",
    "target",
    "split",
    "accuracy",
    "macro_f1",
    "n",
    "layer",
    "alpha",
    "selected_ids",
    "prompt_tokens_per_query",
    "fit_seconds",
    "eval_seconds",
    "peak_memory_mb",
    "trainable_params",
    "uses_target_labels",
    "scoring",
    "castlib_version",
    "prompt_format",
    "predictions",
    "top_label_share",
)


class Evaluable(Protocol):
    """What evaluation reads of a fitted method (a `castlib.methods.base.Method`)."""

    params: Any
    last_result: EvalResult | None

    def check_evaluable(self, lm: LanguageModel, target: str | Task) -> Task: ...

    def eval_scoring(self) -> str: ...

    def eval_prompts(self, lm: LanguageModel, target: Task, examples: Sequence[Example]) -> Any: ...

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]: ...

    def prefix_cache(self) -> bool: ...

    #: ``record(lm, result, stats, labels=...)``: the result record (`Method.record`)
    record: Callable[..., dict[str, Any]]


@contextmanager
def measure(device: torch.device) -> Iterator[dict[str, float]]:
    """Wall seconds and peak memory growth (MiB) of the block, as a dict filled in on exit
    (``seconds``, ``peak_memory_mb``): `castlib.profiling.profile`'s ``seconds`` and
    ``growth_mb`` (the CUDA peak allocation on CUDA, the peak resident-set growth of the
    process, sampled every 5 ms, elsewhere)."""
    out: dict[str, float] = {}
    prof = None
    try:
        with profile(device) as prof:
            yield out
    finally:
        if prof is not None:
            out["seconds"] = prof.seconds
            out["peak_memory_mb"] = prof.growth_mb


def compact_predictions(
    predictions: Sequence[dict[str, Any]], labels: Sequence[str] | None
) -> dict[str, list[Any]]:
    """Per-example predictions of an `EvalResult` in a compact, JSON-ready form:
    ``{"id": [...], "pred": [...], "gold": [...], "n_options": [...]}``, one entry per
    evaluated row in evaluation order; ``pred``/``gold`` are indices into ``labels`` and
    ``n_options`` is the number of answers the row was scored on. Without ``labels`` the
    indices cannot be formed and a ValueError is raised."""
    if labels is None:
        raise ValueError("compact_predictions needs the task's labels to index predictions")
    index = {label: i for i, label in enumerate(labels)}
    return {
        "id": [p["id"] for p in predictions],
        "pred": [index[p["pred"]] for p in predictions],
        "gold": [index[p["gold"]] for p in predictions],
        "n_options": [len(p["log_probs"]) for p in predictions],
    }


def _alone(
    lm: LanguageModel,
    method: Evaluable,
    target: Task,
    examples: list[Example],
    split: str,
    progress: bool | None,
) -> tuple[EvalResult, dict[str, float]]:
    """``"full"`` scoring: the method's prompts scored inside ``method.applied(lm)``."""
    with measure(lm.device) as stats:
        prompt = method.eval_prompts(lm, target, examples)
        with method.applied(lm):
            result = evaluate(
                lm,
                target,
                prompt=prompt,
                split=split,
                examples=examples,
                batch_size=method.params.batch_size,
                progress=progress,
                prefix_cache=method.prefix_cache(),
            )
    return result, stats


def evaluate_methods(
    lm: LanguageModel,
    methods: Sequence[Evaluable],
    target: str | Task,
    split: str = "test",
    limit: int | None = None,
    progress: bool | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
    count_shared: bool = True,
) -> list[dict[str, Any]]:
    """One result record per method, in order, as ``[m.evaluate(lm, target, ...) for m in
    methods]`` would give: the one evaluation path (see the module docstring), which
    `Method.evaluate` takes for one method (``count_shared=False``).

    Every method is checked first (`Method.check_evaluable`: fitted, for this target and
    model), and all are scored on the same rows (``limit``/``sample``/``sample_seed``:
    `castlib.scoring.select_examples`). With ``count_shared`` each record has
    ``eval_shared``: how many methods shared its scoring pass (1 for a method evaluated
    alone); a shared record's ``eval_seconds`` is its share of the sweep's wall time. Each
    method's ``last_result`` is its `EvalResult`.

    Raises as `Method.evaluate` does for an unfitted method or a foreign target or model.
    """
    methods = list(methods)
    if not methods:
        return []
    tasks = [m.check_evaluable(lm, target) for m in methods]
    tgt = tasks[0]
    if any(t.name != tgt.name for t in tasks):
        raise ValueError(
            f"evaluate_methods: one target for all, got {sorted({t.name for t in tasks})}"
        )
    examples = select_examples(tgt, split, limit, sample, sample_seed)
    groups: dict[tuple[Any, ...], list[int]] = {}
    alone: list[int] = []
    for i, m in enumerate(methods):
        if m.eval_scoring() != SCORING_CACHED:
            alone.append(i)
            continue
        prompts = build_prompts(tgt, examples, m.eval_prompts(lm, tgt, examples))
        groups.setdefault((tuple(prompts), m.params.batch_size), []).append(i)
    scored: dict[int, tuple[EvalResult, dict[str, float], int]] = {}
    for (texts, batch_size), members in groups.items():
        with measure(lm.device) as stats:
            results = evaluate_sweep(
                lm,
                tgt,
                [(lambda m=methods[i]: m.applied(lm)) for i in members],
                prompt=list(texts),
                split=split,
                examples=examples,
                batch_size=batch_size,
                progress=progress,
            )
        share = {**stats, "seconds": stats["seconds"] / len(members)}
        for i, result in zip(members, results, strict=True):
            scored[i] = (result, share, len(members))
    for i in alone:
        scored[i] = (*_alone(lm, methods[i], tgt, examples, split, progress), 1)
    records = []
    for i, m in enumerate(methods):
        result, stats, shared = scored[i]
        m.last_result = result
        rec = m.record(lm, result, stats, labels=tgt.labels)
        records.append({**rec, "eval_shared": shared} if count_shared else rec)
    return records
