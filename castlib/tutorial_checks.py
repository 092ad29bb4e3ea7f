"""What the tutorial's check cells share (notebooks/tutorial): placeholders, the student's code
called with its input named, hooks left behind by an earlier attempt, and the accuracies a split
can give.

Every exercise cell of the tutorial is followed by a check cell that reads like a test: it calls
the student's code on known inputs and asserts what the lesson says must hold. Three things every
check needs are here, so that each notebook says them the same way:

- `answered`: a placeholder (``...`` or None) becomes "not done yet", not a confusing failure;
- `attempt`: an exception inside the student's function is re-raised as an `ExerciseError` that
  names the exercise and the input it was called with (``coverage(S=[])`` raised ...), with the
  original exception chained, so that the student does not have to guess which call failed;
- `clear_hooks`: a check that looks for hooks left behind removes them itself (castlib steering
  contexts left open, then any forward hook still on a decoder block), so that a corrected
  second attempt in the same kernel passes without a kernel restart.

`accuracy_bounds` lets a check recompute a student's accuracy from the rows it claims to be on:
the accuracy of ``n`` rows is a multiple of ``1 / n``, and a prediction can differ between two
scoring paths only on a row whose two best label scores are within float rounding of each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .models import LanguageModel
from .scoring import EvalResult

__all__ = ["ExerciseError", "answered", "attempt", "clear_hooks", "accuracy_bounds"]

T = TypeVar("T")

#: Label scores closer than this (in log-probability) count as a tie in `accuracy_bounds`: the
#: same prompts scored on another path (batched differently, a cached prefix) can order them
#: either way. castlib's own paths agree far more closely (the tutorial's sweeps are bit-equal).
TIE_TOLERANCE = 1e-4


class ExerciseError(Exception):
    """The student's code raised while a check called it; the message names the input."""


def answered(value: T, exercise: str) -> T:
    """``value``, or a friendly error while the exercise still holds its placeholder."""
    if value is None or value is Ellipsis:
        raise NotImplementedError(
            f"Exercise {exercise} is not done yet: replace the `...` in the exercise cell above "
            "with your code, run that cell, then run this check again."
        )
    return value


def attempt(exercise: str, fn: Callable[..., T], /, *args: Any, on: str, **kwargs: Any) -> T:
    """``answered(fn(*args, **kwargs), exercise)``; an exception raised by ``fn`` becomes an
    `ExerciseError` naming ``fn``, the input ``on`` (a short description of the arguments,
    e.g. ``"S = []"``) and the original error, which stays chained as ``__cause__``."""
    try:
        value = fn(*args, **kwargs)
    except Exception as error:  # the student's code: any exception, named with its input
        name = getattr(fn, "__name__", repr(fn))
        raise ExerciseError(
            f"Exercise {exercise}: your {name} raised {type(error).__name__} when called on "
            f"{on}:\n  {error}\n(the traceback above this message shows where, in your code)"
        ) from error
    return answered(value, exercise)


def _remove_forward_hooks(module: nn.Module) -> int:
    """Remove every forward and forward-pre hook registered on ``module`` itself (what each
    handle's ``remove()`` would do); the number removed."""
    removed = 0
    for hooks, extras in (
        (
            module._forward_hooks,
            (module._forward_hooks_with_kwargs, module._forward_hooks_always_called),
        ),
        (module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
    ):
        for key in list(hooks):
            del hooks[key]
            for extra in extras:
                extra.pop(key, None)
            removed += 1
    return removed


def clear_hooks(lm: LanguageModel) -> int:
    """End every castlib intervention still active on ``lm`` (a ``castlib.steer(...)`` opened
    without ``with``), then remove every forward and forward-pre hook still registered on its
    decoder blocks (a hook whose handle was never removed); the number of interventions and
    hooks removed, 0 when nothing was left.

    Only for a check cell between two steps of the tutorial, when nothing of castlib's is meant
    to be running: castlib's own recording and steering hooks exist only inside their calls and
    ``with`` blocks, so what is left on a block at that moment was left by the student's code.
    """
    removed = 0
    for intervention in list(lm.interventions):
        intervention.remove()
        removed += 1
    for block in lm.blocks:
        removed += _remove_forward_hooks(block)
    return removed


def accuracy_bounds(result: EvalResult, tolerance: float = TIE_TOLERANCE) -> tuple[float, float]:
    """The lowest and highest accuracy that ``result``'s rows can give on any scoring path:
    ``result.accuracy`` minus (plus) the share of correctly (wrongly) predicted rows whose two
    best label log-probabilities are within ``tolerance`` of each other, and so could be
    predicted the other way."""
    n = len(result.predictions)
    if n == 0:
        raise ValueError("accuracy_bounds: result holds no predictions (evaluate's rows)")
    could_lose = could_gain = 0
    for row in result.predictions:
        scores = sorted(row["log_probs"], reverse=True)
        if len(scores) > 1 and scores[0] - scores[1] <= tolerance:
            if row["correct"]:
                could_lose += 1
            else:
                could_gain += 1
    return result.accuracy - could_lose / n, result.accuracy + could_gain / n
