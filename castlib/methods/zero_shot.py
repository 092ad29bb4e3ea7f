"""Zero-shot baseline: the target prompt P0(x) alone, y_hat = argmax_a log P(" a" | P0(x))."""

from __future__ import annotations

from ..models import LanguageModel
from ..tasks import Task
from .base import Method
from .registry import register

__all__ = ["ZeroShotMethod"]


@register
class ZeroShotMethod(Method):
    """Nothing to fit; the reference every other method is compared with."""

    name = "zero_shot"
    uses_sources = False  # the sources are not read

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        return None
