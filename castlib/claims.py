"""The paper's claims judged from archived batch records: main tables and one verdict each.

Input: an archive's aggregated ``summary.csv`` (one row per record, `castlib.runs.aggregate`)
and, where the runs kept them, its per-example prediction lines (`castlib.runs
.load_predictions`). Nothing here loads a model.

* `main_table`: per target of one notebook and model, zero-shot, CAST and the best label-free
  baseline (the most accurate method other than those two whose records do not say
  ``uses_target_labels``). With per-example predictions for every record: accuracy with a 95%
  paired-bootstrap interval over test rows (seeds pooled) and CAST's paired differences with
  their interval, exact McNemar p and `castlib.stats.verdict` (`castlib.stats.target_table`).
  Otherwise: mean +- sample std over seeds (`castlib.nbtools.mean_std`), and the differences of
  means, which no test can resolve.
* `CLAIMS`: the claims of the abstract the notebooks test, and `claim_paragraph`: one verdict
  paragraph per claim, computed from the records by the same rules as the notebooks'
  conclusion cells (a difference counts only where its interval excludes zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from . import nbtools, stats

__all__ = ["CLAIMS", "Claim", "MainTable", "claim_paragraph", "main_table", "notebook_stem"]

REFERENCE = "zero_shot"
FOCUS = "cast"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper (arXiv 2507.13236, abstract) and the notebook that tests it."""

    notebook: str
    title: str
    quote: str


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "00_quickstart",
        "Transfer by latent steering",
        "cross-task transfer can be achieved by latent space steering without parameter "
        "updates or input expansion",
    ),
    Claim(
        "01_activation_patterns",
        "Consistent activation patterns",
        "the enhanced activations induced by in-context examples have consistent patterns "
        "across different tasks",
    ),
    Claim(
        "02_cross_domain",
        "Cross-domain transfer",
        "our method outperforms competitive baselines (cross-domain)",
    ),
    Claim(
        "03_cross_lingual",
        "Cross-lingual transfer",
        "our method outperforms competitive baselines (cross-lingual)",
    ),
    Claim(
        "04_ablations",
        "Both ingredients matter",
        "selects influential and diverse samples ... then utilizes their contrastive "
        "representation-enhanced activations",
    ),
    Claim(
        "05_scalability_cost",
        "Scalability and cost",
        "demonstrates superior scalability and lower computational costs",
    ),
    Claim(
        "06_sensitivity",
        "Robustness",
        "cross-task ICL faces critical challenges in terms of robustness; CAST is the robust "
        "alternative",
    ),
    Claim(
        "07_transfer_vs_similarity",
        "Transfer follows similarity",
        "consistent patterns across different tasks let a source task's activations adapt "
        "the model to a different target task",
    ),
)


def notebook_stem(label: Any) -> str:
    """``notebooks/02_cross_domain.ipynb`` -> ``02_cross_domain``."""
    return PurePosixPath(str(label)).stem


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])


def _fmt(x: Any, decimals: int = 3) -> str:
    return nbtools.fmt(None if x is None else float(x), decimals)


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
            baseline: ``target, versus, other, diff, low, high, p_mcnemar, n`` (low, high
            and p_mcnemar NaN without predictions).
    """

    table: pd.DataFrame
    long: pd.DataFrame
    paired: bool
    comparisons: pd.DataFrame

    @property
    def statistic(self) -> str:
        """How the table's uncertainty was computed, in words."""
        if self.paired:
            return (
                "accuracy with a 95% paired-bootstrap interval over test rows (seeds pooled); "
                "differences with their paired interval and exact McNemar p (castlib.stats)"
            )
        return (
            "mean +- std over seeds (these records keep no per-example predictions, so no "
            "paired interval can be computed)"
        )


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


def _paired(records: list[Mapping[str, Any]], n_boot: int) -> MainTable:
    full = stats.target_table(records, reference=REFERENCE, focus=FOCUS, n_boot=n_boot)
    rows, long, comps = [], [], []
    for target, part in full.groupby("target", sort=True):
        by = part.set_index("method")
        best = by["best_label_free"].iloc[0]
        best = None if best is None or (isinstance(best, float) and math.isnan(best)) else best

        def cell(method: str | None, by: pd.DataFrame = by) -> str:
            if method is None or method not in by.index:
                return "n/a"
            r = by.loc[method]
            return f"{r['accuracy']:.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}]"

        row: dict[str, Any] = {
            "target": target,
            "n": int(by["n"].iloc[0]),
            "seeds": int(by["runs"].max()),
            "majority": f"{by['majority_rate'].iloc[0]:.3f}",
            "zero-shot": cell(REFERENCE),
            "CAST": cell(FOCUS),
            "best label-free": f"{best}: {cell(best)}" if best else "n/a",
        }
        for role, method in (("zero-shot", REFERENCE), ("CAST", FOCUS), ("best label-free", best)):
            if method is not None and method in by.index:
                r = by.loc[method]
                long.append(
                    {
                        "target": target,
                        "role": role,
                        "method": method,
                        "accuracy": r["accuracy"],
                        "low": r["acc_low"],
                        "high": r["acc_high"],
                    }
                )
        if FOCUS in by.index:
            r = by.loc[FOCUS]
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
                        "diff": diff,
                        "low": r[f"{key}_low"],
                        "high": r[f"{key}_high"],
                        "p_mcnemar": r[f"{key}_p_mcnemar"],
                        "n": row["n"],
                    }
                )
        rows.append(row)
    return MainTable(pd.DataFrame(rows), pd.DataFrame(long), True, pd.DataFrame(comps))


def _by_seeds(rows: pd.DataFrame) -> MainTable:
    flags = rows["uses_target_labels"] if "uses_target_labels" in rows else None
    labelled = set(rows.loc[_truthy(flags), "method"]) if flags is not None else set()
    ms = nbtools.mean_std(rows, ["target", "method"], decimals=6)
    out, long, comps = [], [], []
    for target, part in ms.groupby(level="target", sort=True):
        by = part.droplevel("target")
        candidates = [m for m in by.index if m not in (REFERENCE, FOCUS) and m not in labelled]
        best = max(candidates, key=lambda m: by.loc[m, "mean"]) if candidates else None

        def cell(method: str | None, by: pd.DataFrame = by) -> str:
            if method is None or method not in by.index:
                return "n/a"
            r = by.loc[method]
            return f"{r['mean']:.3f} +- {r['std']:.3f}"

        row: dict[str, Any] = {
            "target": target,
            "n": int(rows.loc[rows["target"] == target, "n"].max()) if "n" in rows else None,
            "seeds": int(by["n"].max()),
            "majority": "n/a",
            "zero-shot": cell(REFERENCE),
            "CAST": cell(FOCUS),
            "best label-free": f"{best}: {cell(best)}" if best else "n/a",
        }
        for role, method in (("zero-shot", REFERENCE), ("CAST", FOCUS), ("best label-free", best)):
            if method is not None and method in by.index:
                r = by.loc[method]
                long.append(
                    {
                        "target": target,
                        "role": role,
                        "method": method,
                        "accuracy": r["mean"],
                        "low": r["mean"] - r["std"],
                        "high": r["mean"] + r["std"],
                    }
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
            comps.append(
                {
                    "target": target,
                    "versus": versus,
                    "other": other,
                    "diff": a - b,
                    "low": float("nan"),
                    "high": float("nan"),
                    "p_mcnemar": float("nan"),
                    "n": row["n"],
                }
            )
        out.append(row)
    return MainTable(pd.DataFrame(out), pd.DataFrame(long), False, pd.DataFrame(comps))


def main_table(
    rows: pd.DataFrame,
    predictions: Sequence[Mapping[str, Any]] | None = None,
    n_boot: int = stats.N_BOOT,
) -> MainTable:
    """The main table of one notebook's records for one model (see the module docstring).

    ``rows``: summary.csv rows (``run_id, target, method, accuracy`` and optionally ``seed``,
    ``n``, ``uses_target_labels``) of one notebook and model; ``predictions``: the archive's
    prediction lines (any runs: those of ``rows``' runs are used when every record has one).
    """
    missing = {"run_id", "target", "method", "accuracy"} - set(rows.columns)
    if missing:
        raise ValueError(f"main_table: records lack the columns {sorted(missing)}")
    rows = rows.dropna(subset=["accuracy"])
    if rows.empty:
        raise ValueError("main_table: no record with an accuracy")
    records = _records_with_predictions(rows, predictions)
    if records is not None:
        return _paired(records, n_boot)
    return _by_seeds(rows)


# --------------------------------------------------------------------------- verdicts


def _count(comps: pd.DataFrame, versus: str) -> tuple[int, int, int, list[int]]:
    part = comps[comps["versus"] == versus]
    better = int((part["low"] > 0).sum())
    worse = int((part["high"] < 0).sum())
    return better, worse, len(part) - better - worse, sorted({int(n) for n in part["n"].dropna()})


def _transfer_paragraph(main: MainTable) -> str:
    comps = main.comparisons
    n_targets = main.table.shape[0]
    if comps.empty or FOCUS not in set(main.long["method"]):
        return f"No {FOCUS} record among these {n_targets} target(s): not evaluated."
    if not main.paired:
        means = comps.assign(beats=comps["diff"] > 0)
        zs = means[means["versus"] == "zero-shot"]
        bl = means[means["versus"] == "best label-free"]
        text = (
            "Undecided from these records (means over seeds only). CAST's mean accuracy is "
            f"above zero-shot's on {int(zs['beats'].sum())} of {len(zs)} target(s)"
        )
        if len(bl):
            text += f" and above the best label-free baseline's on {int(bl['beats'].sum())}"
        return text + (
            "; the records keep no per-example predictions, so no difference can be tested, "
            "and the std over seeds covers fit randomness only."
        )
    parts = []
    for versus in ("zero-shot", "best label-free"):
        better, worse, unresolved, ns = _count(comps, versus)
        if better + worse + unresolved == 0:
            continue
        at = ", ".join(str(n) for n in ns)
        parts.append(
            f"against {versus}, CAST is resolved better on {better}, resolved worse on {worse} "
            f"and not resolved on {unresolved} target(s) (n = {at} test rows; 95% paired "
            "bootstrap)"
        )
    key = "best label-free" if (comps["versus"] == "best label-free").any() else "zero-shot"
    name = "the best label-free baseline" if key == "best label-free" else "zero-shot"
    better, worse, unresolved, _ = _count(comps, key)
    total = better + worse + unresolved
    if better == total:
        head = f"Supported: CAST beats {name} on every target, resolved."
    elif better:
        head = f"Partly supported: CAST beats {name}, resolved, on {better} of {total} target(s)."
    elif worse:
        head = (
            f"Not supported: CAST is never resolved better than {name} and is resolved worse "
            f"on {worse} of {total} target(s)."
        )
    else:
        head = f"Not resolved: no difference between CAST and {name} is resolved at these n."
    return head + " In detail, " + "; ".join(parts) + "."


def _consistency_paragraph(rows: pd.DataFrame) -> str:
    need = {"analysis", "cross_task_cosine", "floor", "ceiling", "layer"}
    if not need <= set(rows.columns):
        return "The records hold no per-layer cross-task cosine: not evaluated."
    layers = rows[rows["analysis"] == "layer"].dropna(subset=["cross_task_cosine"])
    if layers.empty:
        return "The records hold no per-layer cross-task cosine: not evaluated."
    layers = layers.sort_values("layer")
    above = layers["cross_task_cosine"] > layers["floor"]
    n_layers = len(layers)
    mid = layers.iloc[n_layers // 2]
    consistent = above.mean() > 0.5  # notebook 01's rule: above the floor at most layers
    tasks = str(layers["target"].iloc[0]).count("+") + 1 if "target" in layers else "the"
    return (
        f"{'Supported' if consistent else 'Not supported'} by notebook 01's measure: across "
        f"{tasks} tasks the mean cross-task cosine of the ICL enhancement is above the random "
        f"floor at {int(above.sum())} of {n_layers} layers; at layer {int(mid['layer'])} it is "
        f"{_fmt(mid['cross_task_cosine'])}, against a split-half ceiling of "
        f"{_fmt(mid['ceiling'])} and a floor of {_fmt(mid['floor'])}."
    )


def _cast_vs_zero_paragraph(rows: pd.DataFrame) -> str:
    """Notebooks 04-07: CAST's mean accuracy over all its records of the notebook against
    zero-shot's (records of method zero_shot, else the records' ``zero_shot_accuracy``)."""
    if not {"method", "accuracy"} <= set(rows.columns):
        return "The records hold no method accuracies: not evaluated."
    acc = rows.dropna(subset=["accuracy"])
    cast = acc.loc[acc["method"] == FOCUS, "accuracy"]
    zero = acc.loc[acc["method"] == REFERENCE, "accuracy"]
    if zero.empty and "zero_shot_accuracy" in acc:
        zero = acc["zero_shot_accuracy"].dropna()
    if cast.empty or zero.empty:
        return "The records hold no CAST and zero-shot accuracies to compare: not evaluated."
    a, b = float(cast.mean()), float(zero.mean())
    return (
        f"Over this notebook's {len(cast)} CAST record(s) (every variant or grid point), CAST's "
        f"mean accuracy {_fmt(a)} {nbtools.verdict(a, b)} zero-shot's {_fmt(b)}. This is the "
        "only comparison the report draws from these records; the claim's specifics are in the "
        "notebook's own conclusion (its archived page)."
    )


def claim_paragraph(
    claim: Claim,
    rows: pd.DataFrame,
    predictions: Sequence[Mapping[str, Any]] | None = None,
    n_boot: int = stats.N_BOOT,
) -> str:
    """The verdict paragraph of ``claim`` from ``rows``: the summary rows of its notebook for
    one model (empty: not evaluated)."""
    if rows.empty:
        return "No archived run of this notebook: not evaluated."
    if claim.notebook == "01_activation_patterns":
        return _consistency_paragraph(rows)
    if claim.notebook in ("00_quickstart", "02_cross_domain", "03_cross_lingual"):
        if {"target", "method", "accuracy"} <= set(rows.columns):
            return _transfer_paragraph(main_table(rows, predictions, n_boot=n_boot))
    return _cast_vs_zero_paragraph(rows)
