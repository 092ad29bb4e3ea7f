"""Scoring: answer log-probabilities after a prompt, and the evaluation of a task from them.

    scores[i, k] = log P(" " + answers[k] | prompts[i])          every scorer (`Scorer`)
    y_hat_i      = argmax over the example's label space          `evaluate`

One way down: `logprobs` (answer tokens, continuation log-probs, the `Scorer` interface, input
checks) -> the scorers: `plain` (every token of every prompt), `prefix_cache` (a shared
demonstration prefix run once), `last_token` (many last-position steering configurations against
cached prefixes; `kv_cache` copies and merges the caches) -> `evaluation` (`evaluate`: rows,
prompts, the scorer by name in `SCORERS`; `evaluate_sweep`) -> `result` (predictions and
metrics, `EvalResult`).
"""

from .evaluation import (
    SCORERS,
    build_prompts,
    evaluate,
    evaluate_sweep,
    score_prompts,
    select_examples,
)
from .last_token import SCORING_CACHED, Config, sweep_scores
from .logprobs import Scorer, answer_token_ids, continuation_log_probs
from .plain import score_plain
from .prefix_cache import PrefixCache, build_prefix_cache, score_prompts_cached, score_suffixes
from .result import EvalResult, macro_f1, result_from_scores

__all__ = [
    "Scorer",
    "SCORERS",
    "SCORING_CACHED",
    "Config",
    "EvalResult",
    "evaluate",
    "evaluate_sweep",
    "score_prompts",
    "score_plain",
    "score_prompts_cached",
    "score_suffixes",
    "sweep_scores",
    "PrefixCache",
    "build_prefix_cache",
    "build_prompts",
    "select_examples",
    "answer_token_ids",
    "continuation_log_probs",
    "macro_f1",
    "result_from_scores",
]
