"""Statistics of evaluation records: what a table of accuracies can and cannot resolve.

All functions work on per-row correctness (1 where a method predicted the gold answer of a test
row, else 0) or on the predictions themselves, as stored in every record's ``predictions``
(`castlib.methods.shared_eval.compact_predictions`). Three modules:

* `castlib.stats.rows`: one comparison on the same rows: trivial rates, the bootstrap interval
  of an accuracy and of a paired difference over rows, the exact McNemar test, `verdict`.
* `castlib.stats.seeds`: comparisons that count the seeds (the per-seed differences, the
  two-level bootstrap over seeds then rows, the exact McNemar test stratified by seed,
  `seed_verdict`), and a method's collapse onto one label (`top_label_share`,
  `is_collapsed`, `COLLAPSE_THRESHOLD` = 0.9).
* `castlib.stats.tables`: `target_table`, the per-target table of notebooks 02/03 and the
  README, and `conclusions`, its sentences.

A difference is "resolved" (`seed_verdict`) only where its interval (two-level when the
comparison has several seeds) excludes zero and the stratified exact McNemar test rejects at
0.05; a comparison with one seed says that the variance of the fit was not measured.
"""

from .rows import (
    N_BOOT,
    Interval,
    McNemar,
    accuracy_interval,
    chance_rate,
    correctness,
    majority_rate,
    mcnemar_exact,
    paired_difference,
    verdict,
)
from .seeds import (
    ALPHA,
    COLLAPSE_THRESHOLD,
    SeedInterval,
    StratifiedMcNemar,
    is_collapsed,
    mcnemar_stratified,
    seed_differences,
    seed_verdict,
    top_label_share,
    two_level_interval,
)
from .tables import BASELINE_GROUPS, compare, conclusions, target_table

__all__ = [
    "ALPHA",
    "BASELINE_GROUPS",
    "COLLAPSE_THRESHOLD",
    "N_BOOT",
    "Interval",
    "McNemar",
    "SeedInterval",
    "StratifiedMcNemar",
    "accuracy_interval",
    "chance_rate",
    "compare",
    "conclusions",
    "correctness",
    "is_collapsed",
    "majority_rate",
    "mcnemar_exact",
    "mcnemar_stratified",
    "paired_difference",
    "seed_differences",
    "seed_verdict",
    "target_table",
    "top_label_share",
    "two_level_interval",
    "verdict",
]
