"""The main table of one notebook's archived records for one model (notebooks 00, 02, 03).

Per target: zero-shot, CAST and the best label-free baseline (the most accurate method other
than those two whose records do not say ``uses_target_labels``).

* With per-example predictions for every record (`castlib.stats.target_table`): accuracy with
  a 95% paired-bootstrap interval over test rows (seeds pooled row by row) and each method's
  most-predicted-label share, marked "collapsed" above the threshold (default
  `castlib.stats.COLLAPSE_THRESHOLD` = 0.9); CAST's paired differences with the interval of
  the two-level bootstrap (seeds, then rows), the exact McNemar p stratified by seed and the
  verdict: resolved where the interval excludes zero and p < 0.05; a comparison resting on one
  seed says that the variance of the fit was not measured. A column lists every method of the
  target that is collapsed, shown in the table or not.
* Otherwise: mean +- sample std over seeds (`castlib.repro.nbtools.mean_std`), the largest
  ``top_label_share`` the records keep (newer records do), and the differences of means, which
  no test can resolve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from .. import stats
from . import nbtools

__all__ = ["FOCUS", "REFERENCE", "MainTable", "main_table", "notebook_stem"]

REFERENCE = "zero_shot"
FOCUS = "cast"
_COMPARISON_COLUMNS = [
    *("target", "versus", "other", "diff", "low", "high", "p_mcnemar", "n"),
    *("seeds", "per_seed", "resolved", "verdict"),
]


def notebook_stem(label: Any) -> str:
    """``notebooks/02_cross_domain.ipynb`` -> ``02_cross_domain``."""
    return PurePosixPath(str(label)).stem


def truthy(values: pd.Series) -> pd.Series:
    """True where a CSV column holds a true value (``True``, ``1``, ``1.0``, any case)."""
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])


def _role_points(target: str, by: Any, best: str | None, interval: Any) -> list[dict[str, Any]]:
    """One figure point per role (zero-shot, CAST, best label-free) present in ``by`` (rows
    indexed by method): ``interval(row)`` gives (accuracy, low, high)."""
    out = []
    for role, method in (("zero-shot", REFERENCE), ("CAST", FOCUS), ("best label-free", best)):
        if method is not None and method in by.index:
            acc, low, high = interval(by.loc[method])
            out.append(
                {
                    "target": target,
                    "role": role,
                    "method": method,
                    "accuracy": acc,
                    "low": low,
                    "high": high,
                }
            )
    return out


@dataclass(frozen=True)
class MainTable:
    """One notebook's main table for one model.

    Attributes:
        table: display frame, one row per target (formatted strings).
        long: tidy frame for figures: ``target, role, method, accuracy, low, high``
            (``role`` in zero-shot / CAST / best label-free; low/high the 95% paired-bootstrap
            interval, or mean -+ std over seeds).
        paired: True when built from per-example predictions (paired statistics).
        comparisons: per target, CAST against zero-shot and against the best label-free
            baseline: ``target, versus, other, diff, low, high, p_mcnemar, n, seeds,
            per_seed, resolved, verdict`` (low, high and p_mcnemar NaN without predictions).
        collapsed: every method of every target whose most-predicted-label share is above the
            threshold: ``target, method, top_label_share``.
        collapse_threshold: that threshold.
    """

    table: pd.DataFrame
    long: pd.DataFrame
    paired: bool
    comparisons: pd.DataFrame
    collapsed: pd.DataFrame
    collapse_threshold: float = stats.COLLAPSE_THRESHOLD

    @property
    def statistic(self) -> str:
        """How the table's uncertainty was computed, in words."""
        share = (
            f"top: the share of rows given the method's most-predicted label, collapsed above "
            f"{self.collapse_threshold:.0%}"
        )
        if self.paired:
            return (
                "accuracy with a 95% paired-bootstrap interval over test rows (seeds pooled); "
                "differences with a 95% two-level bootstrap interval (seeds, then rows) and the "
                "exact McNemar p stratified by seed, resolved where the interval excludes zero "
                "and p < 0.05 (one seed: the fit variance is not measured; castlib.stats); " + share
            )
        return (
            "mean +- std over seeds (these records keep no per-example predictions, so no "
            "paired interval can be computed); " + share + " where the records keep it"
        )

    def collapse_note(self) -> str:
        """A sentence naming the collapsed methods (and whether the best label-free baseline
        is one of them); empty when none is."""
        if self.collapsed.empty:
            return ""
        rows = self.collapsed[["target", "method", "top_label_share"]].itertuples(index=False)
        names = "; ".join(f"{m} on {t} ({s:.2f})" for t, m, s in rows)
        text = (
            f" Collapsed (one label for more than {self.collapse_threshold:.0%} of rows, so "
            f"their accuracy is mostly that label's share): {names}."
        )
        best = self.comparisons[self.comparisons["versus"] == "best label-free"]
        hit = self.collapsed.merge(best, left_on=["target", "method"], right_on=["target", "other"])
        if len(hit):
            text += f" The best label-free baseline is collapsed on {', '.join(hit['target'])}."
        return text

    def seed_note(self) -> str:
        """A sentence on the seeds the comparisons rest on (one seed: fit variance not
        measured); empty without comparisons."""
        seeds = sorted({int(x) for x in self.comparisons["seeds"].dropna()})
        if not seeds:
            return ""
        if seeds == [1]:
            return " Every comparison rests on one seed: the variance of the fit was not measured."
        tail = (
            " (a one-seed comparison does not measure the variance of the fit)"
            if 1 in seeds
            else ""
        )
        return f" Seeds per comparison: {', '.join(map(str, seeds))}{tail}."


def _records_with_predictions(
    rows: pd.DataFrame, predictions: Sequence[Mapping[str, Any]] | None
) -> list[Mapping[str, Any]] | None:
    """The prediction lines of exactly ``rows``' runs, or None unless every record has one."""
    if not predictions:
        return None
    run_ids = set(rows["run_id"])
    lines = [p for p in predictions if p.get("run_id") in run_ids]
    if len(lines) != len(rows):
        return None
    return lines


def n_seeds(seeds: Iterable[Any]) -> int:
    """How many distinct seeds (a method fitted once per source task has several records per
    seed: they are runs, not seeds); records without a seed count as one."""
    return max(1, len({s for s in seeds if s is not None and not pd.isna(s)}))


def _share_text(share: float, threshold: float) -> str:
    if pd.isna(share):
        return ""
    mark = " collapsed" if stats.is_collapsed(float(share), threshold) else ""
    return f"; top {share:.2f}{mark}"


def _collapsed_cell(collapsed: pd.DataFrame, target: str) -> str:
    part = collapsed[collapsed["target"] == target] if not collapsed.empty else collapsed
    if part.empty:
        return "none"
    pairs = zip(part["method"], part["top_label_share"], strict=True)
    return ", ".join(f"{m} {s:.2f}" for m, s in pairs)


def _paired(records: list[Mapping[str, Any]], n_boot: int, threshold: float) -> MainTable:
    full = stats.target_table(
        records, reference=REFERENCE, focus=FOCUS, n_boot=n_boot, collapse_threshold=threshold
    )
    collapsed = full.loc[full["collapsed"], ["target", "method", "top_label_share"]]
    collapsed = collapsed.reset_index(drop=True)
    rows, long, comps = [], [], []
    for target, part in full.groupby("target", sort=True):
        by = part.set_index("method")
        best = by["best_label_free"].iloc[0]
        best = None if best is None or (isinstance(best, float) and math.isnan(best)) else best

        def cell(method: str | None, by: pd.DataFrame = by) -> str:
            if method is None or method not in by.index:
                return "n/a"
            r = by.loc[method]
            return (
                f"{r['accuracy']:.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}]"
                f"{_share_text(r['top_label_share'], threshold)}"
            )

        row: dict[str, Any] = {
            "target": target,
            "n": int(by["n"].iloc[0]),
            "seeds": n_seeds(r.get("seed") for r in records if r["target"] == target),
            "majority": f"{by['majority_rate'].iloc[0]:.3f}",
            "zero-shot": cell(REFERENCE),
            "CAST": cell(FOCUS),
            "best label-free": f"{best}: {cell(best)}" if best else "n/a",
        }
        long += _role_points(
            target, by, best, lambda r: (r["accuracy"], r["acc_low"], r["acc_high"])
        )
        r = by.loc[FOCUS] if FOCUS in by.index else pd.Series(dtype=object)
        for key, versus, other in (
            (f"vs_{REFERENCE}", "zero-shot", REFERENCE),
            ("vs_best_label_free", "best label-free", best),
        ):
            diff = r.get(f"{key}_diff")
            if other is None or diff is None or pd.isna(diff):
                row[f"CAST - {versus}"] = "n/a"
                continue
            row[f"CAST - {versus}"] = (
                f"{diff:+.3f} [{r[f'{key}_low']:+.3f}, {r[f'{key}_high']:+.3f}], "
                f"p = {r[f'{key}_p_mcnemar']:.3g}: {r[f'{key}_verdict']}"
            )
            comps.append(
                {
                    "target": target,
                    "versus": versus,
                    "other": other,
                    **{k: r[f"{key}_{k}"] for k in ("diff", "low", "high", "p_mcnemar")},
                    "n": row["n"],
                    **{k: r[f"{key}_{k}"] for k in ("seeds", "per_seed", "resolved", "verdict")},
                }
            )
        row["collapsed (one label)"] = _collapsed_cell(collapsed, target)
        rows.append(row)
    return MainTable(
        pd.DataFrame(rows),
        pd.DataFrame(long),
        True,
        pd.DataFrame(comps, columns=_COMPARISON_COLUMNS),
        collapsed,
        threshold,
    )


def _per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per (target, method, seed): a method fitted once per source task has a
    record per source within a seed, pooled here by their mean (as the notebooks pool them),
    so that the spread below is over seeds, not over sources."""
    if "seed" not in rows:
        return rows
    keys = ["target", "method", rows["seed"].fillna(-1).rename("seed")]
    return rows.groupby(keys, sort=False)["accuracy"].mean().reset_index()


def _shares(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``target, method, top_label_share`` (the largest over the records) where the records
    keep the share."""
    if "top_label_share" not in rows:
        return pd.DataFrame(columns=["target", "method", "top_label_share"])
    data = rows.assign(top_label_share=pd.to_numeric(rows["top_label_share"], errors="coerce"))
    return data.groupby(["target", "method"])["top_label_share"].max().dropna().reset_index()


def _by_seeds(rows: pd.DataFrame, threshold: float) -> MainTable:
    flags = rows["uses_target_labels"] if "uses_target_labels" in rows else None
    labelled = set(rows.loc[truthy(flags), "method"]) if flags is not None else set()
    ms = nbtools.mean_std(_per_seed(rows), ["target", "method"], decimals=6)
    shares = _shares(rows, threshold)
    share_of = {(t, m): s for t, m, s in shares.itertuples(index=False)}
    collapsed = shares[shares["top_label_share"] > threshold].reset_index(drop=True)
    out, long, comps = [], [], []
    for target, part in ms.groupby(level="target", sort=True):
        by = part.droplevel("target")
        candidates = [m for m in by.index if m not in (REFERENCE, FOCUS) and m not in labelled]
        best = max(candidates, key=lambda m: by.loc[m, "mean"]) if candidates else None

        def cell(method: str | None, by: pd.DataFrame = by, target: str = target) -> str:
            if method is None or method not in by.index:
                return "n/a"
            r = by.loc[method]
            share = _share_text(share_of.get((target, method), float("nan")), threshold)
            if int(r["n"]) < 2:  # one seed: no spread to report (mean_std's 0 is not one)
                return f"{r['mean']:.3f} (1 seed){share}"
            return f"{r['mean']:.3f} +- {r['std']:.3f}{share}"

        row: dict[str, Any] = {
            "target": target,
            "n": int(rows.loc[rows["target"] == target, "n"].max()) if "n" in rows else None,
            "seeds": n_seeds(rows.loc[rows["target"] == target].get("seed", pd.Series())),
            "majority": "n/a",
            "zero-shot": cell(REFERENCE),
            "CAST": cell(FOCUS),
            "best label-free": f"{best}: {cell(best)}" if best else "n/a",
        }
        long += _role_points(
            target, by, best, lambda r: (r["mean"], r["mean"] - r["std"], r["mean"] + r["std"])
        )
        for versus, other in (("zero-shot", REFERENCE), ("best label-free", best)):
            if FOCUS not in by.index or other is None or other not in by.index:
                row[f"CAST - {versus}"] = "n/a"
                continue
            a, b = float(by.loc[FOCUS, "mean"]), float(by.loc[other, "mean"])
            row[f"CAST - {versus}"] = (
                f"{a - b:+.3f} (means; CAST {nbtools.verdict(a, b)} {other}; not testable "
                "without per-example predictions)"
            )
            nan = float("nan")
            comps.append(
                {
                    "target": target,
                    "versus": versus,
                    "other": other,
                    "diff": a - b,
                    "low": nan,
                    "high": nan,
                    "p_mcnemar": nan,
                    "n": row["n"],
                    "seeds": row["seeds"],
                    "per_seed": "",
                    "resolved": False,
                    "verdict": "not testable without per-example predictions",
                }
            )
        if not shares.empty:
            row["collapsed (one label)"] = _collapsed_cell(collapsed, target)
        out.append(row)
    return MainTable(
        pd.DataFrame(out),
        pd.DataFrame(long),
        False,
        pd.DataFrame(comps, columns=_COMPARISON_COLUMNS),
        collapsed,
        threshold,
    )


def main_table(
    rows: pd.DataFrame,
    predictions: Sequence[Mapping[str, Any]] | None = None,
    n_boot: int = stats.N_BOOT,
    collapse_threshold: float = stats.COLLAPSE_THRESHOLD,
) -> MainTable:
    """The main table of one notebook's records for one model (see the module docstring).

    ``rows``: summary.csv rows (``run_id, target, method, accuracy`` and optionally ``seed``,
    ``n``, ``uses_target_labels``, ``top_label_share``) of one notebook and model;
    ``predictions``: the archive's prediction lines (any runs: those of ``rows``' runs are used
    when every record has one); ``collapse_threshold``: the most-predicted-label share above
    which a method is marked collapsed.
    """
    missing = {"run_id", "target", "method", "accuracy"} - set(rows.columns)
    if missing:
        raise ValueError(f"main_table: records lack the columns {sorted(missing)}")
    stats.is_collapsed(0.5, collapse_threshold)  # validates the threshold
    rows = rows.dropna(subset=["accuracy"])
    if rows.empty:
        raise ValueError("main_table: no record with an accuracy")
    records = _records_with_predictions(rows, predictions)
    if records is not None:
        return _paired(records, n_boot, collapse_threshold)
    return _by_seeds(rows, collapse_threshold)
