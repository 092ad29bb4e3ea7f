"""Statistics of evaluation records: what a table of accuracies can and cannot resolve.

All functions work on per-row correctness (1 where a method predicted the gold answer of a test
row, else 0), as stored in every record's ``predictions`` (`castlib.methods.shared_eval
.compact_predictions`). A method run with several seeds on the same rows gives a matrix
``[runs, rows]``; seeds are pooled by averaging each row over the runs, so that the unit of
resampling is the test row (the source of sampling error that a larger test set reduces), not
the (seed, row) pair.

* `majority_rate`, `chance_rate`: the two trivial baselines of the evaluated rows.
* `accuracy_interval`: accuracy with a percentile bootstrap interval over rows (Efron and
  Tibshirani 1993, ch. 13): resample the n rows with replacement ``n_boot`` times, take the
  accuracy of each resample, report the (1 - level)/2 and (1 + level)/2 quantiles.
* `paired_difference`: ``acc(a) - acc(b)`` on the same rows with a *paired* bootstrap interval:
  each resample draws the same rows for both methods, so the per-row correlation of the two
  methods is kept (the interval is much narrower than two independent intervals suggest).
* `mcnemar_exact`: the exact McNemar test (McNemar 1947; the exact form of Fay 2010): of the
  discordant rows, b where only ``a`` is right and c where only ``b`` is right, under H0
  ``b ~ Binomial(b + c, 1/2)`` and the two-sided p-value is
  ``min(1, 2 * P(X <= min(b, c)))``, computed exactly with integers.
* `verdict`: "resolved" only where an interval excludes zero, else "not resolved at n = ...".
* `target_table`: the per-target table of notebooks 02/03 from a list of records, and
  `conclusions`: its printed sentences.

Bootstraps are seeded (``numpy.random.default_rng(seed)``) and vectorised: the same seed gives
the same resamples for every method compared on the same n rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "Interval",
    "McNemar",
    "majority_rate",
    "chance_rate",
    "correctness",
    "accuracy_interval",
    "paired_difference",
    "mcnemar_exact",
    "verdict",
    "target_table",
    "conclusions",
]

#: Resamples per bootstrap interval (Monte Carlo error of a 95% percentile bound ~ 0.002 at
#: n = 200, p = 0.3).
N_BOOT = 10_000
_CHUNK = 1_000  # resamples drawn at once (memory: _CHUNK x n indices)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap interval over ``n`` rows at ``level``."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when zero lies strictly outside ``[low, high]``."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two methods on the same rows: ``b`` rows where only the first is
    right, ``c`` where only the second is, and the exact two-sided p-value."""

    b: int
    c: int
    p_value: float


def majority_rate(gold: Sequence[int] | np.ndarray) -> float:
    """Share of the evaluated rows whose gold answer is the most frequent one: the accuracy
    of always answering the majority class."""
    gold = np.asarray(gold)
    if gold.size == 0:
        raise ValueError("majority_rate of no rows")
    _, counts = np.unique(gold, return_counts=True)
    return float(counts.max() / gold.size)


def chance_rate(n_options: Sequence[int] | np.ndarray) -> float:
    """Expected accuracy of a uniform random guess: the mean of ``1 / n_options`` over rows."""
    n_options = np.asarray(n_options, dtype=float)
    if n_options.size == 0:
        raise ValueError("chance_rate of no rows")
    if (n_options < 1).any():
        raise ValueError("every row needs at least one option")
    return float(np.mean(1.0 / n_options))


def correctness(pred: Sequence[int], gold: Sequence[int]) -> np.ndarray:
    """1.0 where ``pred == gold``, else 0.0 (float64, one entry per row)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {gold.shape[0]} gold answers")
    return (pred == gold).astype(float)


def _rows(correct: Sequence[Any] | np.ndarray, name: str) -> np.ndarray:
    """Per-row correctness pooled over runs: a [runs, n] or [n] array -> its mean per row."""
    arr = np.asarray(correct, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected correctness of shape [runs, rows] or [rows]")
    if ((arr != 0) & (arr != 1)).any():
        raise ValueError(f"{name}: correctness must be 0/1")
    return arr.mean(axis=0)


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (rows drawn with replacement) of ``values``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        out[start : start + size] = values[idx].mean(axis=1)
    return out


def _interval(values: np.ndarray, n_boot: int, level: float, seed: int) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    boots = _bootstrap_means(values, n_boot, seed)
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(values.mean()), float(low), float(high), int(values.shape[0]), level)


def accuracy_interval(
    correct: Sequence[Any] | np.ndarray,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Accuracy (seeds pooled) with a percentile bootstrap interval over the test rows.

    ``correct``: 0/1 of shape ``[rows]`` or ``[runs, rows]`` (runs: seeds on the same rows).
    """
    return _interval(_rows(correct, "correct"), n_boot, level, seed)


def paired_difference(
    a: Sequence[Any] | np.ndarray,
    b: Sequence[Any] | np.ndarray,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``acc(a) - acc(b)`` on the same rows with a paired bootstrap interval: each resample
    draws the same rows for both (per-row differences of the seed-pooled correctness)."""
    ra, rb = _rows(a, "a"), _rows(b, "b")
    if ra.shape != rb.shape:
        raise ValueError(f"a has {ra.shape[0]} rows and b {rb.shape[0]}: not paired")
    return _interval(ra - rb, n_boot, level, seed)


def mcnemar_exact(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> McNemar:
    """Exact McNemar test of two 0/1 correctness vectors on the same rows.

    With b = #(a right, b wrong) and c = #(a wrong, b right), the two-sided p-value is
    ``min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c))`` (1 when b + c = 0): the
    two-sided binomial test of b successes in b + c trials at p = 1/2.
    """
    xa, xb = np.asarray(a), np.asarray(b)
    if xa.ndim != 1 or xa.shape != xb.shape:
        raise ValueError("mcnemar_exact needs two 1-D correctness vectors of the same length")
    if not (np.isin(xa, (0, 1)).all() and np.isin(xb, (0, 1)).all()):
        raise ValueError("correctness must be 0/1")
    xa, xb = xa.astype(bool), xb.astype(bool)
    n_b = int((xa & ~xb).sum())
    n_c = int((~xa & xb).sum())
    n = n_b + n_c
    if n == 0:
        return McNemar(n_b, n_c, 1.0)
    tail = Fraction(sum(math.comb(n, i) for i in range(min(n_b, n_c) + 1)), 2**n)
    return McNemar(n_b, n_c, float(min(Fraction(1), 2 * tail)))


def verdict(diff: Interval | tuple[float, float], n: int) -> str:
    """``"resolved"`` where the difference's interval excludes zero, otherwise
    ``"not resolved at n = {n}"``."""
    low, high = (diff.low, diff.high) if isinstance(diff, Interval) else diff
    if low > high:
        raise ValueError(f"interval bounds out of order: ({low}, {high})")
    return "resolved" if low > 0 or high < 0 else f"not resolved at n = {n}"


# --------------------------------------------------------------------------- tables


def _predictions(record: Mapping[str, Any]) -> dict[str, list[Any]]:
    preds = record.get("predictions")
    if isinstance(preds, str):
        preds = json.loads(preds)
    if not isinstance(preds, Mapping) or not {"id", "pred", "gold"} <= set(preds):
        raise ValueError(
            f"record of {record.get('method')!r} on {record.get('target')!r} has no per-example "
            "predictions (records written before castlib kept them cannot be tested)"
        )
    return dict(preds)


def _pairs(seeds_a: Sequence[Any], seeds_b: Sequence[Any]) -> list[tuple[int, int]]:
    """Runs of two methods to compare by McNemar: a single run against every run of the
    other; else each run with the other's runs of the same seed (several runs may share a
    seed: a method fitted once per source task); else, with as many runs as seeds, in order."""
    ra, rb = len(seeds_a), len(seeds_b)
    if rb == 1:
        return [(i, 0) for i in range(ra)]
    if ra == 1:
        return [(0, j) for j in range(rb)]
    same = [(i, j) for i in range(ra) for j in range(rb) if seeds_a[i] == seeds_b[j]]
    if {i for i, _ in same} == set(range(ra)) and {j for _, j in same} == set(range(rb)):
        return same
    if ra == rb:
        return [(i, i) for i in range(ra)]
    raise ValueError(f"cannot pair {ra} runs with {rb} runs (give 1 or the same seeds)")


def _compare(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int,
    seed: int,
    seeds_a: Sequence[Any] | None = None,
    seeds_b: Sequence[Any] | None = None,
) -> dict[str, Any]:
    diff = paired_difference(a, b, n_boot=n_boot, seed=seed)
    sa = list(seeds_a) if seeds_a is not None else list(range(len(a)))
    sb = list(seeds_b) if seeds_b is not None else list(range(len(b)))
    p = max(mcnemar_exact(a[i], b[j]).p_value for i, j in _pairs(sa, sb))
    return {
        "diff": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "p_mcnemar": p,
        "verdict": verdict(diff, diff.n),
    }


#: Baseline groups of `target_table`: which methods the "best baseline" is chosen from.
BASELINE_GROUPS = ("label_free", "target_labels")


def target_table(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    reference: str = "zero_shot",
    focus: str = "cast",
    n_boot: int = N_BOOT,
    seed: int = 0,
    baselines: str = "label_free",
) -> pd.DataFrame:
    """Per target and method: accuracy with its 95% paired-bootstrap interval (seeds pooled),
    and the paired difference to ``reference`` and to the best baseline of the ``baselines``
    group (the most accurate method other than ``reference`` and ``focus`` whose records say
    ``uses_target_labels`` is false for ``"label_free"``, true for ``"target_labels"``), each
    with its interval, the exact McNemar p-value and the `verdict`.

    Records need ``target``, ``method``, ``predictions`` (dict or its JSON string) and
    optionally ``seed``, ``uses_target_labels``. Every method of a target must have been
    evaluated on the same rows (same ids, same order after sorting by id). Several records of
    a method are its runs (seeds, or one run per source task of a method fitted once per
    source), and its per-row correctness is their mean. The McNemar p-value is the largest
    over its runs, each paired with the other method's runs of the same seed (or its single
    run): conservative, never pooled.

    Columns: ``target, method, runs, n, majority_rate, chance_rate, accuracy, acc_low,
    acc_high, vs_<reference>_{diff,low,high,p_mcnemar,verdict}``, the same for
    ``vs_best_<baselines>_*`` and ``best_<baselines>`` (the baseline's name).
    """
    if baselines not in BASELINE_GROUPS:
        raise ValueError(f"baselines must be one of {BASELINE_GROUPS}, got {baselines!r}")
    if isinstance(records, pd.DataFrame):
        records = records.to_dict("records")
    by_target: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for rec in records:
        by_target.setdefault(rec["target"], {}).setdefault(rec["method"], []).append(rec)
    rows = []
    for target, methods in sorted(by_target.items()):
        correct: dict[str, np.ndarray] = {}
        run_seeds: dict[str, list[Any]] = {}
        label_free: dict[str, bool] = {}
        ids = gold = n_options = None
        for method, recs in sorted(methods.items()):
            runs = []
            ordered = sorted(recs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
            run_seeds[method] = [r.get("seed") for r in ordered]
            for rec in ordered:
                preds = _predictions(rec)
                order = np.argsort(np.asarray(preds["id"], dtype=str), kind="stable")
                these = [str(preds["id"][k]) for k in order]
                if ids is None:
                    ids = these
                    gold = np.asarray(preds["gold"])[order]
                    n_options = np.asarray(preds.get("n_options") or [0] * len(these))[order]
                elif these != ids:
                    raise ValueError(
                        f"{target}: {method} was evaluated on other rows than the first method "
                        "(paired statistics need the same rows for every method)"
                    )
                runs.append(correctness(np.asarray(preds["pred"])[order], gold))
            correct[method] = np.stack(runs)
            label_free[method] = not any(bool(r.get("uses_target_labels")) for r in recs)
        assert ids is not None and gold is not None and n_options is not None
        acc = {m: accuracy_interval(c, n_boot=n_boot, seed=seed) for m, c in correct.items()}
        wanted = baselines == "label_free"
        candidates = [m for m in correct if label_free[m] is wanted and m not in (reference, focus)]
        best = max(candidates, key=lambda m: acc[m].estimate) if candidates else None
        chance = chance_rate(n_options) if (n_options > 0).all() else float("nan")
        for method, c in correct.items():
            row: dict[str, Any] = {
                "target": target,
                "method": method,
                "runs": len(c),
                "n": len(ids),
                "majority_rate": majority_rate(gold),
                "chance_rate": chance,
                "accuracy": acc[method].estimate,
                "acc_low": acc[method].low,
                "acc_high": acc[method].high,
                f"best_{baselines}": best,
            }
            for key, other in ((f"vs_{reference}", reference), (f"vs_best_{baselines}", best)):
                if other is None or other not in correct or other == method:
                    continue
                cmp = _compare(c, correct[other], n_boot, seed, run_seeds[method], run_seeds[other])
                row.update({f"{key}_{k}": v for k, v in cmp.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def conclusions(
    table: pd.DataFrame,
    method: str = "cast",
    reference: str = "zero_shot",
    baselines: str = "label_free",
) -> list[str]:
    """One sentence per target of a `target_table` (made with the same ``baselines``):
    ``method``'s accuracy and interval, the trivial rates, and its differences to
    ``reference`` and to the best baseline of the group with interval, McNemar p and
    verdict."""
    lines = []
    for target, rows in table.groupby("target", sort=True):
        first = rows.iloc[0]
        head = (
            f"{target} (n = {first['n']}; majority {first['majority_rate']:.3f}, "
            f"chance {first['chance_rate']:.3f}): "
        )
        by_method = rows.set_index("method")
        if method not in by_method.index:
            lines.append(head + f"no {method} record")
            continue
        row = by_method.loc[method]
        text = f"{method} {row['accuracy']:.3f} [{row['acc_low']:.3f}, {row['acc_high']:.3f}]"
        for key, other in (
            (f"vs_{reference}", reference),
            (f"vs_best_{baselines}", row.get(f"best_{baselines}")),
        ):
            diff = row.get(f"{key}_diff")
            if other is None or diff is None or (isinstance(diff, float) and math.isnan(diff)):
                continue
            text += (
                f"; vs {other} {diff:+.3f} [{row[f'{key}_low']:+.3f}, {row[f'{key}_high']:+.3f}], "
                f"McNemar p = {row[f'{key}_p_mcnemar']:.3g}: {row[f'{key}_verdict']}"
            )
        lines.append(head + text)
    return lines
