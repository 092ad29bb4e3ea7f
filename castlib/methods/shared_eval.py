"""Several fitted methods evaluated on the same rows, sharing the work they have in common.

A method that steers the last prompt position only (`Method.eval_scoring` is
`castlib.scoring.last_token.SCORING_CACHED`: CAST, task vectors, function vectors, their variants and
target_dev presets, the unsteered model) leaves every earlier position of a prompt as the
unsteered model computes it. Methods of that kind that evaluate the same prompts therefore need
each prompt's prefix only once: `evaluate_methods` scores them together in one
`castlib.scoring.evaluate.evaluate_sweep` (one prefix pass per prompt, then one one-token pass per
method), which gives each method the record `Method.evaluate` gives it, up to float rounding of
the scores (same predictions; ``scoring`` says which path ran: evaluated alone, one
configuration with one-token answers takes the plain pass, see `castlib.scoring.evaluate.evaluate_sweep`).
Every other method is evaluated on its own, as by `Method.evaluate`. Ablation and sensitivity grids (notebooks 04 and 06), which fit many
variants of CAST and score each on the same test split, cost one test pass plus one token per
variant this way instead of one test pass per variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import LanguageModel
from ..scoring.evaluate import build_prompts, evaluate_sweep, select_examples
from ..scoring.last_token import SCORING_CACHED
from .base import Method, TaskRef, measure

__all__ = ["evaluate_methods"]


def evaluate_methods(
    lm: LanguageModel,
    methods: Sequence[Method],
    target: TaskRef,
    split: str = "test",
    limit: int | None = None,
    progress: bool | None = None,
    sample: int | None = None,
    sample_seed: int = 0,
) -> list[dict[str, Any]]:
    """One result record per method, in order, as ``[m.evaluate(lm, target, ...) for m in
    methods]`` would give (same rows: ``limit``/``sample``/``sample_seed`` as in
    `Method.evaluate`).

    Methods with cached scoring, the same evaluation prompts and the same ``batch_size`` are
    scored in one sweep; each such record's ``eval_seconds`` is its share of the sweep's wall
    time and ``eval_shared`` says how many methods shared it (1 for a method evaluated alone).
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
    prompts: dict[int, list[str]] = {}
    for i, m in enumerate(methods):
        if m.eval_scoring() != SCORING_CACHED:
            alone.append(i)
            continue
        prompts[i] = build_prompts(tgt, examples, m.eval_prompts(lm, tgt, examples))
        groups.setdefault((tuple(prompts[i]), m.params.batch_size), []).append(i)
    records: list[dict[str, Any] | None] = [None] * len(methods)
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
            m = methods[i]
            m.last_result = result
            rec = m.record(lm, result, share, labels=tgt.labels)
            rec["eval_shared"] = len(members)
            records[i] = rec
    for i in alone:
        rec = methods[i].evaluate(
            lm,
            tgt,
            split=split,
            limit=limit,
            progress=progress,
            sample=sample,
            sample_seed=sample_seed,
        )
        rec["eval_shared"] = 1
        records[i] = rec
    return [r for r in records if r is not None]
