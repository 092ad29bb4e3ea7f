"""The per-target table of notebooks 02/03 and the README from evaluation records.

`target_table`: per target and method, accuracy with its 95% paired-bootstrap interval over
rows (seeds pooled row by row), the most-predicted-label share and collapse flag
(`castlib.stats.seeds.top_label_share`), and the paired differences to a reference and to the
best baseline of a group, each counting the seeds: the interval from the two-level bootstrap
(`castlib.stats.seeds.two_level_interval`), the exact McNemar test stratified by seed
(`castlib.stats.seeds.mcnemar_stratified`) and `castlib.stats.seeds.seed_verdict`.
`conclusions`: its printed sentences.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .rows import N_BOOT, accuracy_interval, chance_rate, correctness, majority_rate
from .seeds import (
    ALPHA,
    COLLAPSE_THRESHOLD,
    is_collapsed,
    mcnemar_stratified,
    seed_differences,
    seed_verdict,
    top_label_share,
    two_level_interval,
)

if TYPE_CHECKING:  # pandas is a notebooks extra: imported where a table is built
    import pandas as pd

__all__ = ["BASELINE_GROUPS", "compare", "conclusions", "target_table"]

#: Baseline groups of `target_table`: which methods the "best baseline" is chosen from.
BASELINE_GROUPS = ("label_free", "target_labels")


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
    """Runs of two methods compared by the stratified McNemar test (one stratum each): a
    single run against every run of the other; else each run with the other's runs of the
    same seed (several runs may share a seed: a method fitted once per source task); else,
    with as many runs as seeds, in order."""
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


def compare(
    a: np.ndarray,
    b: np.ndarray,
    seeds_a: Sequence[Any] | None = None,
    seeds_b: Sequence[Any] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """``acc(a) - acc(b)`` of two methods' ``[runs, n]`` 0/1 correctness on the same rows,
    counting the seeds: ``diff, low, high`` (two-level bootstrap), ``seeds`` (seeds paired),
    ``per_seed`` (each seed's difference), ``p_mcnemar`` (exact, stratified by seed),
    ``resolved`` and ``verdict`` (`castlib.stats.seeds.seed_verdict`)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    sa = list(seeds_a) if seeds_a is not None else list(range(len(a)))
    sb = list(seeds_b) if seeds_b is not None else list(range(len(b)))
    diff = two_level_interval(seed_differences(a, b, sa, sb), n_boot=n_boot, seed=seed)
    test = mcnemar_stratified([(a[i], b[j]) for i, j in _pairs(sa, sb)])
    verdict = seed_verdict(diff, test.p_value, diff.seeds, alpha)
    return {
        "diff": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "seeds": diff.seeds,
        "per_seed": ", ".join(f"{x:+.3f}" for x in diff.per_seed),
        "p_mcnemar": test.p_value,
        "resolved": verdict.startswith("resolved"),
        "verdict": verdict,
    }


def _method_runs(
    target: str, method: str, recs: list[Mapping[str, Any]], ref: dict[str, Any]
) -> tuple[np.ndarray, list[Any], float]:
    """One method's ``[runs, n]`` correctness (rows sorted by id), its runs' seeds and its
    most-predicted-label share (the largest over runs); ``ref`` holds the first method's
    ``ids``, ``gold`` and ``n_options``, set here when empty."""
    runs, shares = [], []
    ordered = sorted(recs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
    for rec in ordered:
        preds = _predictions(rec)
        order = np.argsort(np.asarray(preds["id"], dtype=str), kind="stable")
        these = [str(preds["id"][k]) for k in order]
        if not ref:
            ref["ids"] = these
            ref["gold"] = np.asarray(preds["gold"])[order]
            ref["n_options"] = np.asarray(preds.get("n_options") or [0] * len(these))[order]
        elif these != ref["ids"]:
            raise ValueError(
                f"{target}: {method} was evaluated on other rows than the first method "
                "(paired statistics need the same rows for every method)"
            )
        pred = np.asarray(preds["pred"])[order]
        runs.append(correctness(pred, ref["gold"]))
        shares.append(top_label_share(pred))
    return np.stack(runs), [r.get("seed") for r in ordered], max(shares)


def target_table(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    reference: str = "zero_shot",
    focus: str = "cast",
    n_boot: int = N_BOOT,
    seed: int = 0,
    baselines: str = "label_free",
    collapse_threshold: float = COLLAPSE_THRESHOLD,
) -> pd.DataFrame:
    """Per target and method: accuracy with its 95% paired-bootstrap interval over rows (seeds
    pooled row by row), the most-predicted-label share (the largest over the method's runs)
    and whether it is above ``collapse_threshold``, and the paired differences to
    ``reference`` and to the best baseline of the ``baselines`` group (the most accurate method
    other than ``reference`` and ``focus`` whose records say ``uses_target_labels`` is false
    for ``"label_free"``, true for ``"target_labels"``), each from `compare`: the two-level
    bootstrap interval over seeds and rows, the exact McNemar p stratified by seed and the
    verdict (resolved: the interval excludes zero and p < 0.05; one seed says that the fit
    variance was not measured).

    Records need ``target``, ``method``, ``predictions`` (dict or its JSON string) and
    optionally ``seed``, ``uses_target_labels``. Every method of a target must have been
    evaluated on the same rows. Several records of a method are its runs (seeds, or one run
    per source task of a method fitted once per source: those are averaged within the seed).

    Columns: ``target, method, runs, n, majority_rate, chance_rate, accuracy, acc_low,
    acc_high, top_label_share, collapsed, vs_<reference>_{diff,low,high,seeds,per_seed,
    p_mcnemar,resolved,verdict}``, the same for ``vs_best_<baselines>_*`` and
    ``best_<baselines>`` (the baseline's name).
    """
    import pandas as pd

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
        share: dict[str, float] = {}
        label_free: dict[str, bool] = {}
        ref: dict[str, Any] = {}
        for method, recs in sorted(methods.items()):
            correct[method], run_seeds[method], share[method] = _method_runs(
                target, method, recs, ref
            )
            label_free[method] = not any(bool(r.get("uses_target_labels")) for r in recs)
        acc = {m: accuracy_interval(c, n_boot=n_boot, seed=seed) for m, c in correct.items()}
        wanted = baselines == "label_free"
        candidates = [m for m in correct if label_free[m] is wanted and m not in (reference, focus)]
        best = max(candidates, key=lambda m: acc[m].estimate) if candidates else None
        n_options = ref["n_options"]
        chance = chance_rate(n_options) if (n_options > 0).all() else float("nan")
        for method, c in correct.items():
            row: dict[str, Any] = {
                "target": target,
                "method": method,
                "runs": len(c),
                "n": len(ref["ids"]),
                "majority_rate": majority_rate(ref["gold"]),
                "chance_rate": chance,
                "accuracy": acc[method].estimate,
                "acc_low": acc[method].low,
                "acc_high": acc[method].high,
                "top_label_share": share[method],
                "collapsed": is_collapsed(share[method], collapse_threshold),
                f"best_{baselines}": best,
            }
            for key, other in ((f"vs_{reference}", reference), (f"vs_best_{baselines}", best)):
                if other is None or other not in correct or other == method:
                    continue
                cmp = compare(c, correct[other], run_seeds[method], run_seeds[other], n_boot, seed)
                row.update({f"{key}_{k}": v for k, v in cmp.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _share(row: Mapping[str, Any]) -> str:
    if row.get("collapsed"):
        return f"; collapsed: one label for {row['top_label_share']:.0%} of rows"
    return ""


def conclusions(
    table: pd.DataFrame,
    method: str = "cast",
    reference: str = "zero_shot",
    baselines: str = "label_free",
) -> list[str]:
    """One sentence per target of a `target_table` (made with the same ``baselines``):
    ``method``'s accuracy and interval (and its collapse), the trivial rates, and its
    differences to ``reference`` and to the best baseline of the group (marked when that
    baseline is collapsed) with interval, seeds, stratified McNemar p and verdict."""
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
        text += _share(row)
        for key, other in (
            (f"vs_{reference}", reference),
            (f"vs_best_{baselines}", row.get(f"best_{baselines}")),
        ):
            diff = row.get(f"{key}_diff")
            if other is None or diff is None or (isinstance(diff, float) and math.isnan(diff)):
                continue
            mark = " (collapsed)" if bool(by_method.loc[other].get("collapsed")) else ""
            text += (
                f"; vs {other}{mark} {diff:+.3f} [{row[f'{key}_low']:+.3f}, "
                f"{row[f'{key}_high']:+.3f}] over {int(row[f'{key}_seeds'])} seed(s), "
                f"McNemar p = {row[f'{key}_p_mcnemar']:.3g}: {row[f'{key}_verdict']}"
            )
        lines.append(head + text)
    return lines
