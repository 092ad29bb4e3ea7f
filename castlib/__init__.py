"""castlib: Cross-task Activation Steering Transfer (CAST), a reference implementation.

The public API fits on one screen:

    lm = castlib.load_model()                         # embedded Gemma 3 270M (or any HF id/path)
    task = castlib.load_task("sst2")                  # normalised task data
    acts = castlib.record_activations(lm, prompts)    # [n, layers, hidden] at the last real token
    with castlib.steer(lm, vector, alpha=4.0, layers=[6]):
        result = castlib.evaluate(lm, task, limit=100)
    grid = [lambda a=a: castlib.steer(lm, vector, alpha=a, layers=[6]) for a in (0.5, 1, 2)]
    results = castlib.evaluate_sweep(lm, task, grid, limit=100)   # one prefix pass per prompt
"""

from ._version import __version__
from .models import EMBEDDED_MODEL, LanguageModel, find_blocks, load_model, wrap_model
from .prompts import CrossTask, FewShot, PerQuery, ZeroShot, cross_task, k_shot, zero_shot
from .record import record_activations
from .scoring import EvalResult, evaluate, evaluate_sweep, score_prompts
from .steer import Steering, steer
from .tasks import Example, Task, list_tasks, load_task
from .vectors import SteeringVector

__all__ = [
    "__version__",
    "EMBEDDED_MODEL",
    "LanguageModel",
    "load_model",
    "wrap_model",
    "find_blocks",
    "record_activations",
    "steer",
    "Steering",
    "SteeringVector",
    "Task",
    "Example",
    "load_task",
    "list_tasks",
    "zero_shot",
    "k_shot",
    "cross_task",
    "ZeroShot",
    "FewShot",
    "CrossTask",
    "PerQuery",
    "evaluate",
    "evaluate_sweep",
    "score_prompts",
    "EvalResult",
]
