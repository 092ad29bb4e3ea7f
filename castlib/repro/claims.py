"""The paper's claims judged from archived batch records: main tables and one verdict each.

Input: an archive's aggregated ``summary.csv`` (one row per record, `castlib.repro.runs.aggregate`)
and, where the runs kept them, its per-example prediction lines (`castlib.repro.runs
.load_predictions`). Nothing here loads a model.

* `main_table` (`castlib.repro.main_table`): per target of one notebook and model, zero-shot,
  CAST and the best label-free baseline with intervals, most-predicted-label shares (collapse
  marked) and CAST's paired differences with the verdicts that count the seeds.
* `CLAIMS`: the claims of the abstract the notebooks test, and `claim_paragraph`: one verdict
  paragraph per claim, computed from the records by the rules of the notebooks' conclusion
  cells; `claim_verdict`: the same with its short verdict, n and seeds (the README's claims
  section, `castlib.repro.results_md`):

  - 00, 02, 03: CAST against the best label-free baseline (00: against zero-shot) per target;
    "supported" only where the difference is resolved on every target (the two-level interval
    over seeds and rows excludes zero and the stratified McNemar test rejects), "undecided"
    without per-example predictions; methods collapsed onto one label are named, and a
    comparison resting on one seed says that the fit variance was not measured;
  - 01: the cross-task cosine of the ICL enhancement above the random floor at most layers;
  - 04: CAST's default selection and contrast among the best variants (means);
  - 05: CAST's prompt tokens below cross-task ICL's and its accuracy at least ICL's at the
    largest m where ICL fits the context (means);
  - 06: no swept value (except alpha = 0, which is zero-shot) puts CAST below zero-shot;
  - 07: Pearson r > 0.3 between the source-target enhancement cosine and CAST's gain.

  Records that lack a notebook's columns fall back to CAST's mean accuracy against zero-shot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .. import stats
from .claims_means import (
    _ablation_paragraph,
    _cast_vs_zero_paragraph,
    _fmt,
    _robustness_paragraph,
    _scalability_paragraph,
    _similarity_paragraph,
)
from .main_table import FOCUS, MainTable, main_table, n_seeds, notebook_stem, truthy

__all__ = [
    "CLAIMS",
    "VERDICTS",
    "Claim",
    "ClaimVerdict",
    "MainTable",
    "claim_paragraph",
    "claim_verdict",
    "consistency_layers",
    "main_table",
    "notebook_stem",
    "verdict_label",
]


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


def _count(comps: pd.DataFrame, versus: str) -> tuple[int, int, int, list[int]]:
    part = comps[comps["versus"] == versus]
    resolved = part["resolved"].astype(bool)
    better = int((resolved & (part["diff"] > 0)).sum())
    worse = int((resolved & (part["diff"] < 0)).sum())
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
        return (
            text
            + (
                "; the records keep no per-example predictions, so no difference can be "
                "tested, and the std over seeds covers fit randomness only."
            )
            + main.collapse_note()
        )
    parts = []
    for versus in ("zero-shot", "best label-free"):
        better, worse, unresolved, ns = _count(comps, versus)
        if better + worse + unresolved == 0:
            continue
        at = ", ".join(str(n) for n in ns)
        parts.append(
            f"against {versus}, CAST is resolved better on {better}, resolved worse on {worse} "
            f"and not resolved on {unresolved} target(s) (n = {at} test rows; resolved: the 95% "
            "two-level bootstrap interval over seeds and rows excludes zero and the exact "
            "McNemar test stratified by seed gives p < 0.05)"
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
    tail = main.seed_note() + main.collapse_note()
    return head + " In detail, " + "; ".join(parts) + "." + tail


def consistency_layers(rows: pd.DataFrame) -> pd.DataFrame:
    """Notebook 01's per-layer records (``analysis == "layer"``): ``layer`` (int, sorted),
    ``cross_task_cosine``, ``ceiling``, ``floor`` (and ``target``: the tasks joined by ``+``);
    empty when the rows hold none."""
    need = ["analysis", "layer", "cross_task_cosine", "ceiling", "floor"]
    if not set(need) <= set(rows.columns):
        return pd.DataFrame(columns=need)
    layers = rows[rows["analysis"] == "layer"].copy()
    layers["layer"] = pd.to_numeric(layers["layer"], errors="coerce")
    for col in ("cross_task_cosine", "ceiling", "floor"):
        layers[col] = pd.to_numeric(layers[col], errors="coerce")
    layers = layers.dropna(subset=["layer", "cross_task_cosine", "floor"])
    layers["layer"] = layers["layer"].astype(int)
    return layers.sort_values("layer").reset_index(drop=True)


def _consistency_paragraph(rows: pd.DataFrame) -> str:
    """Notebook 01's claim, judged against placebo prefixes: supported at the layers where the
    95% interval of real minus placebo cross-task cosine is above zero for both placebos
    (shuffled labels, an unrelated task: the records' ``supported``). Records made before the
    placebo analysis hold only the random-direction floor, which any mean shift beats: for them
    the claim is not evaluated."""
    layers = consistency_layers(rows)
    if layers.empty:
        return "The records hold no per-layer cross-task cosine: not evaluated."
    n_layers = len(layers)
    middle = layers[layers["layer"] == n_layers // 2]  # notebook 01 quotes layer L // 2
    mid = middle.iloc[0] if len(middle) else layers.iloc[n_layers // 2]
    tasks = str(layers["target"].iloc[0]).count("+") + 1 if "target" in layers else "the"
    context = (
        f"at layer {int(mid['layer'])} the mean cross-task cosine of the ICL enhancement across "
        f"{tasks} tasks is {_fmt(mid['cross_task_cosine'])}, against a split-half ceiling of "
        f"{_fmt(mid['ceiling'])} and a random-direction floor of {_fmt(mid['floor'])}"
    )
    if "supported" not in layers or layers["supported"].isna().all():
        return (
            "Not evaluated: these records predate the placebo comparison, and the random-"
            "direction floor they hold cannot fail (any shared mean shift beats it); "
            f"{context}."
        )
    supported = truthy(layers["supported"].fillna(False))
    which = [int(x) for x in layers.loc[supported, "layer"]]
    verdict = (
        f"Supported at layers {which} ({len(which)} of {n_layers})"
        if which
        else f"Not supported at any of {n_layers} layers"
    )
    return (
        f"{verdict}: there the cross-task cosine of the real ICL enhancement exceeds both "
        "placebo prefixes of the same length (shuffled labels; an unrelated task), the 95% "
        f"interval of each difference above zero; {context}."
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
    specific = {
        "04_ablations": _ablation_paragraph,
        "05_scalability_cost": _scalability_paragraph,
        "06_sensitivity": _robustness_paragraph,
        "07_transfer_vs_similarity": _similarity_paragraph,
    }
    return specific.get(claim.notebook, _cast_vs_zero_paragraph)(rows)


#: Short verdicts of `verdict_label`, in the order their heads are matched.
VERDICTS = (
    "Not evaluated",
    "Partly supported",
    "Not supported",
    "Not resolved",
    "Undecided",
    "Supported",
    "Not judged",
)


def verdict_label(paragraph: str) -> str:
    """The short verdict of a `claim_paragraph`: its head (the text before the first ``:`` or
    ``.``) when it starts with one of `VERDICTS` ("Supported by the means" keeps its
    qualifier), "Not evaluated" when the first sentence says so, else "Not judged" (a paragraph that
    only compares CAST's mean with zero-shot's)."""
    first = paragraph.split(". ")[0]
    head = first.split(":")[0].strip().rstrip(".")
    if "not evaluated" in first.lower():
        return "Not evaluated"
    for label in VERDICTS[1:-1]:
        if head.startswith(label):
            return head if len(head) <= 60 else label
    return "Not judged"


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict on one model's records: the short ``verdict`` (`verdict_label`), the
    full ``paragraph``, the test rows ``n`` (the distinct values, joined) and the ``seeds``."""

    claim: Claim
    verdict: str
    paragraph: str
    n: str
    seeds: int


def claim_verdict(
    claim: Claim,
    rows: pd.DataFrame,
    predictions: Sequence[Mapping[str, Any]] | None = None,
    n_boot: int = stats.N_BOOT,
) -> ClaimVerdict:
    """`claim_paragraph` with its short verdict, n (the records' ``n``, the distinct values
    joined; "n/a" without the column) and seeds (distinct seeds of the records)."""
    paragraph = claim_paragraph(claim, rows, predictions, n_boot=n_boot)
    ns = pd.to_numeric(rows["n"], errors="coerce").dropna() if "n" in rows else pd.Series()
    n = ", ".join(str(int(x)) for x in sorted(set(ns))) or "n/a"
    seeds = n_seeds(rows["seed"]) if "seed" in rows else 1
    return ClaimVerdict(claim, verdict_label(paragraph), paragraph, n, seeds)
