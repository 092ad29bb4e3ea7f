"""When a loop shows a progress bar: one rule for every long loop of castlib.

A ``progress`` argument of ``True`` or ``False`` is obeyed. ``None`` (every default) shows the bar
when the loop has more than `QUIET_STEPS` steps (batches, optimiser steps, prompts), whatever
the output is: a terminal, a notebook, or a notebook that papermill writes as it runs (a batch's
long fits show their progress there). Short loops, as in the tests and the CI-sized notebooks,
stay silent.
"""

from __future__ import annotations

__all__ = ["QUIET_STEPS", "shown"]

#: Loops of at most this many steps show no bar unless asked to.
QUIET_STEPS = 4


def shown(progress: bool | None, steps: int) -> bool:
    """Whether a loop of ``steps`` steps shows its bar (see the module docstring)."""
    return bool(progress) if progress is not None else steps > QUIET_STEPS
