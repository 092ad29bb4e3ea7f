"""The claims of notebooks 04-07 (ablations, scalability and cost, sensitivity, transfer vs
similarity), judged from the means of their records as each notebook's conclusion states them
(`castlib.repro.claims` assembles every claim; these are its per-notebook rules). Each
paragraph says that it rests on means, and where a record says a baseline collapsed (one
label on more than `castlib.stats.COLLAPSE_THRESHOLD` of the rows) it is not counted as a rival.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .. import stats
from . import nbtools
from .main_table import FOCUS, REFERENCE, truthy


def _fmt(x: Any, decimals: int = 3) -> str:
    return nbtools.fmt(None if x is None else float(x), decimals)


# --------------------------------------------------------------------------- verdicts


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
    zero = data.loc[data["method"] == REFERENCE, "accuracy"].dropna()
    z = float(zero.mean()) if len(zero) else None
    share_col = next((c for c in ("most_predicted_share", "top_label_share") if c in data), None)
    if share_col is None:
        collapse = " ICL's most-predicted-label share is not in these records (a collapsed ICL "
        collapse += "would be a one-label predictor), so the comparison with ICL is weak."
        icl_collapsed = False
    else:
        share = pd.to_numeric(
            data.loc[(data["method"] == "cross_task_icl") & (data["m"] == top), share_col],
            errors="coerce",
        ).max()
        icl_collapsed = bool(share > stats.COLLAPSE_THRESHOLD)
        collapse = (
            f" ICL collapsed at m = {int(top)} (one label on {_fmt(share, 2)} of rows): it is "
            "not a baseline the claim can be judged against."
            if icl_collapsed
            else ""
        )
    above_zero = z is None or a > z
    if cheaper and above_zero and (icl_collapsed or a >= b):
        head = "Supported by the means"
    elif cheaper and not above_zero:
        head = "Not supported: CAST is cheaper per query but not above zero-shot"
    elif cheaper:
        head = "Partly supported: CAST is cheaper per query but less accurate"
    else:
        head = "Not supported"
    against_zero = f"; zero-shot {_fmt(z)}" if z is not None else ""
    return (
        f"{head}: {cost}. At m = {int(top)}, the largest m where ICL fits, CAST "
        f"{nbtools.verdict(a, b)} ICL ({_fmt(a)} vs {_fmt(b)}{against_zero}); CAST is more "
        f"accurate than ICL at {wins} of {len(fitting)} m where ICL fits.{collapse}{_MEANS_ONLY}"
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
