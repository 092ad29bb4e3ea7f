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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .. import stats
from . import nbtools
from .main_table import FOCUS, REFERENCE, MainTable, main_table, n_seeds, notebook_stem, truthy

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


def _fmt(x: Any, decimals: int = 3) -> str:
    return nbtools.fmt(None if x is None else float(x), decimals)


# --------------------------------------------------------------------------- verdicts


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


def _num(rows: pd.DataFrame, *cols: str) -> pd.DataFrame:
    out = rows.copy()
    for col in cols:
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


_MEANS_ONLY = (
    " These are means over the notebook's targets and seeds; the report runs no test on them."
)


def _ablation_paragraph(rows: pd.DataFrame) -> str:
    """Notebook 04's rule: per ablation axis, the best variant(s) by mean accuracy and whether
    CAST's default is among them; the claim needs the default selection and contrast to be."""
    if not {"ablation", "variant", "accuracy", "is_default"} <= set(rows.columns):
        return _cast_vs_zero_paragraph(rows)
    data = _num(rows, "accuracy").dropna(subset=["accuracy"])
    data = data.assign(variant=data["variant"].astype(str), is_default=truthy(data["is_default"]))
    lines, defaults_best = [], {}
    for axis, part in data.groupby("ablation", sort=True):
        means = part.groupby("variant")["accuracy"].mean()
        best = sorted(means.index[means >= means.max() - 1e-9])
        default = part.loc[part["is_default"], "variant"]
        line = f"{axis}: best {', '.join(best)} ({_fmt(means.max())})"
        if len(default):
            d = default.iloc[0]
            defaults_best[axis] = d in best
            line += f", CAST's default {d} {_fmt(means[d])}"
        lines.append(line)
    zero = data["zero_shot_accuracy"] if "zero_shot_accuracy" in data else pd.Series(dtype=float)
    zero = pd.to_numeric(zero, errors="coerce").dropna()
    core = [a for a in ("selection", "contrast") if a in defaults_best]
    if not core:
        head = "Not evaluated: the records hold no selection or contrast ablation."
    elif all(defaults_best[a] for a in core):
        head = f"Supported by the means: CAST's default {' and '.join(core)} score best."
    else:
        worse = [a for a in core if not defaults_best[a]]
        head = f"Not supported by the means: another {' and '.join(worse)} scores higher."
    tail = f"; zero-shot {_fmt(zero.mean())}" if len(zero) else ""
    return f"{head} Per axis, {'; '.join(lines)}{tail}.{_MEANS_ONLY}"


def _scalability_paragraph(rows: pd.DataFrame) -> str:
    """Notebook 05's rule: prompt tokens per query of cross-task ICL and CAST as m grows, the
    m where ICL no longer fits the context, and CAST against ICL at each m where ICL fits."""
    need = {"method", "m", "accuracy", "prompt_tokens_per_query"}
    if not need <= set(rows.columns):
        return _cast_vs_zero_paragraph(rows)
    data = _num(rows, "m", "accuracy", "prompt_tokens_per_query")
    if "cost_only" in data:
        data = data[~truthy(data["cost_only"])]
    fits = truthy(data["fits_context"]) if "fits_context" in data else True
    data = data.assign(fits=fits)
    icl = (
        data[data["method"] == "cross_task_icl"]
        .groupby("m")
        .agg(
            accuracy=("accuracy", "mean"),
            tokens=("prompt_tokens_per_query", "mean"),
            fits=("fits", "all"),
        )
    )
    cast = (
        data[data["method"] == FOCUS]
        .groupby("m")
        .agg(accuracy=("accuracy", "mean"), tokens=("prompt_tokens_per_query", "mean"))
    )
    if icl.empty or cast.empty:
        return _cast_vs_zero_paragraph(rows)
    fitting = [m for m in icl.index if icl.loc[m, "fits"] and m in cast.index]
    unfit = [int(m) for m in icl.index if not icl.loc[m, "fits"]]
    wins = sum(cast.loc[m, "accuracy"] > icl.loc[m, "accuracy"] for m in fitting)
    lo, hi = min(icl.index), max(icl.index)
    cost = (
        f"cross-task ICL prompts grow from {_fmt(icl.loc[lo, 'tokens'], 1)} to "
        f"{_fmt(icl.loc[hi, 'tokens'], 1)} tokens per query as m goes {int(lo)} -> {int(hi)}, "
        f"CAST's stay at {_fmt(cast['tokens'].max(), 1)}"
    )
    cost += f"; ICL does not fit the context at m = {unfit}" if unfit else ""
    if not fitting:
        return f"Not evaluated: ICL fits the context at no m of the records ({cost})."
    top = max(fitting)
    a, b = float(cast.loc[top, "accuracy"]), float(icl.loc[top, "accuracy"])
    cheaper = cast["tokens"].max() < icl.loc[top, "tokens"]
    if cheaper and a >= b:
        head = "Supported by the means"
    elif cheaper:
        head = "Partly supported: CAST is cheaper per query but less accurate"
    else:
        head = "Not supported"
    return (
        f"{head}: {cost}. At m = {int(top)}, the largest m where ICL fits, CAST "
        f"{nbtools.verdict(a, b)} ICL ({_fmt(a)} vs {_fmt(b)}); CAST is more accurate at "
        f"{wins} of {len(fitting)} m where ICL fits.{_MEANS_ONLY}"
    )


def _robustness_paragraph(rows: pd.DataFrame) -> str:
    """Notebook 06's measure: per swept parameter, the spread (max - min) of CAST's mean
    accuracy; robust here means every swept value except alpha = 0 keeps CAST at or above
    zero-shot (alpha = 0, the same rows)."""
    if not {"param", "value", "accuracy"} <= set(rows.columns):
        return _cast_vs_zero_paragraph(rows)
    data = _num(rows, "value", "accuracy").dropna(subset=["value", "accuracy"])
    table = data.groupby(["param", "value"])["accuracy"].mean()
    zero = table.get(("alpha", 0.0))
    spreads = table.groupby(level="param").agg(lambda s: s.max() - s.min())
    lines = [f"{p} {_fmt(spreads[p])}" for p in spreads.index]
    if zero is None:
        return f"Accuracy spans (max - min over values) {', '.join(lines)}; no alpha = 0 point."
    rest = table.drop(index=("alpha", 0.0))
    below = int((rest < zero - 1e-9).sum())
    head = "Supported by this measure" if below == 0 else "Not supported by this measure"
    return (
        f"{head}: {below} of {len(rest)} swept values put CAST below zero-shot "
        f"({_fmt(zero)}, alpha = 0). Accuracy spans (max - min over values) "
        f"{', '.join(lines)}.{_MEANS_ONLY}"
    )


def _pearson(x: pd.Series, y: pd.Series) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(x.corr(y))


def _similarity_paragraph(rows: pd.DataFrame) -> str:
    """Notebook 07's rule: Pearson r between the source-target cosine of the ICL enhancement
    vectors and CAST's gain over zero-shot over the (source, target) pairs; r > 0.3: more
    similar sources transfer better."""
    if not {"source", "target", "cosine", "gain"} <= set(rows.columns):
        return _cast_vs_zero_paragraph(rows)
    data = _num(rows, "cosine", "gain").dropna(subset=["cosine", "gain"])
    pairs = data.groupby(["target", "source"])[["cosine", "gain"]].mean()
    r = _pearson(pairs["cosine"], pairs["gain"])
    positive = int((pairs["gain"] > 0).sum())
    tail = f" CAST gains over zero-shot on {positive} of {len(pairs)} pair(s)."
    if math.isnan(r):
        return (
            f"Not evaluated: {len(pairs)} pair(s), too few (or constant) for a correlation.{tail}"
        )
    trend = (
        "more similar sources transfer better"
        if r > 0.3
        else ("more similar sources transfer worse" if r < -0.3 else "no clear relation")
    )
    head = "Supported" if r > 0.3 else "Not supported"
    return (
        f"{head} by notebook 07's measure: Pearson r between the enhancement-vector cosine and "
        f"CAST's gain over {len(pairs)} pairs is {_fmt(r, 2)} ({trend}).{tail}"
        " A correlation over this few pairs is not a test."
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
