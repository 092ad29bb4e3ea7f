"""What an evaluation measured: predictions from answer log-probabilities, and the metrics.

For the scores ``s [n, K]`` of n examples over the task's K labels, answers outside an
example's label space are masked (``-inf``) and the prediction is ``argmax_k s[i, k]``.

Metrics: accuracy and macro-F1 (the unweighted mean of per-class F1 over the classes that occur
among gold labels or predictions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..models import LanguageModel
from ..tasks import Example, Task

__all__ = ["EvalResult", "macro_f1", "result_from_scores", "check_finite"]


@dataclass
class EvalResult:
    """What `evaluate` measured."""

    task: str
    split: str
    n: int
    accuracy: float
    macro_f1: float
    prompt_tokens_per_query: float
    prompt_tokens_total: int
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list)
    #: how the scores were computed: ``"full"`` (`castlib.scoring.plain`, every token of
    #: every prompt), ``"demo_prefix_cached"`` (`castlib.scoring.prefix_cache`: a shared
    #: demonstration prefix run once) or `castlib.scoring.last_token.SCORING_CACHED`
    #: (`castlib.scoring.evaluation.evaluate_sweep`)
    scoring: str = "full"
    #: rows whose best score is shared by two or more labels (exactly equal log-probs): the
    #: argmax gives them the first of those labels, so many ties mean the scores say nothing
    ties: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self, with_predictions: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_predictions:
            out.pop("predictions")
        return out

    def __repr__(self) -> str:
        return (
            f"EvalResult({self.task}/{self.split}: n={self.n}, accuracy={self.accuracy:.4f}, "
            f"macro_f1={self.macro_f1:.4f}, prompt_tokens/query={self.prompt_tokens_per_query:.1f}, "
            f"{self.seconds:.2f}s)"
        )


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Unweighted mean F1 over the classes present in ``gold`` or ``pred``."""
    if len(gold) != len(pred):
        raise ValueError("gold and pred differ in length")
    if not gold:
        return float("nan")
    scores = []
    for c in sorted(set(gold) | set(pred)):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p == c)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != c and p == c)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def check_finite(
    lm: LanguageModel, task: Task, split: str, examples: Sequence[Example], scores: torch.Tensor
) -> None:
    """Refuse non-finite log-probabilities (NaN or infinite: no prediction can be made from
    them; an overflowing steering scale makes them NaN, see `castlib.steer`)."""
    space = torch.zeros_like(scores, dtype=torch.bool)
    for row, ex in enumerate(examples):
        space[row, : len(task.label_space(ex))] = True
    bad = (~torch.isfinite(scores) & space).any(dim=1)
    nan_rows = [ex.id for row, ex in enumerate(examples) if bad[row]]
    if nan_rows:
        raise FloatingPointError(
            f"{lm.name} gave NaN log-probabilities on {task.name}/{split} rows {nan_rows[:5]}"
            f"{' ...' if len(nan_rows) > 5 else ''} (or infinite ones: non-finite); no "
            f"prediction can be made (a steering scale too large for the dtype, or a broken "
            f"model)"
        )


def result_from_scores(
    task: Task,
    split: str,
    examples: Sequence[Example],
    scores: torch.Tensor,
    n_tokens: Sequence[int],
    seconds: float,
    scoring: str = "full",
) -> EvalResult:
    """The `EvalResult` of answer log-probs ``scores [n, n_labels]``: answers outside an
    example's label space are masked, the prediction is the argmax."""
    scores = scores.clone()
    for row, ex in enumerate(examples):
        scores[row, len(task.label_space(ex)) :] = float("-inf")
    pred = scores.argmax(dim=1).tolist()
    top = scores.topk(2, dim=1).values
    ties = int((top[:, 0] == top[:, 1]).sum())
    gold = [ex.label for ex in examples]
    predictions = [
        {
            "id": ex.id,
            "gold": task.labels[g],
            "pred": task.labels[p],
            "correct": g == p,
            "log_probs": [round(float(s), 6) for s in scores[i, : len(task.label_space(ex))]],
        }
        for i, (ex, g, p) in enumerate(zip(examples, gold, pred, strict=True))
    ]
    return EvalResult(
        task=task.name,
        split=split,
        n=len(examples),
        accuracy=sum(g == p for g, p in zip(gold, pred, strict=True)) / len(examples),
        macro_f1=macro_f1(gold, pred),
        prompt_tokens_per_query=sum(n_tokens) / len(n_tokens),
        prompt_tokens_total=sum(n_tokens),
        seconds=seconds,
        predictions=predictions,
        scoring=scoring,
        ties=ties,
    )
