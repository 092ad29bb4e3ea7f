# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (castlib)
#     language: python
#     name: castlib
# ---

# %% [markdown]
# # 05 Scalability and cost
#
# **What the paper claims** (abstract): cross-task in-context learning "faces critical
# challenges in terms of robustness, scalability, and efficiency"; CAST "demonstrates
# superior scalability and lower computational costs".
#
# CAST_SPEC.md, experiment 5.
# 1. Accuracy as the number of source samples m grows: cross-task ICL puts m source
#    demonstrations in every prompt, so it is bounded by the context window (a point whose
#    longest prompt exceeds `context_tokens` is not run); CAST averages m enhancements into
#    one vector and its prompts stay zero-shot length.
# 2. Cost per query, each as a ratio to zero-shot: prompt tokens, latency, peak memory of
#    inference; and each method's one-off fitting cost (CAST: selection, activations and
#    the (l*, alpha) search; LoRA/KaSA: selection and training) in zero-shot queries, with
#    its trainable parameters: CAST against cross-task ICL, the other steering methods and
#    the parameter-updating LoRA and KaSA, all at the same m. Cross-task ICL is timed twice:
#    prefix-cached (its shared demonstrations run once, their key/value cache reused by every
#    query: `castlib.prefix_cache`, the cheapest way to serve it) and naive (the whole prompt
#    per query).
# 3. The verdicts. "Scales with source data": CAST against zero-shot at every m, against
#    itself at the smallest m, and against every baseline at the same m that has not
#    collapsed (a method whose most-predicted label covers more than `collapse_share` of
#    the rows scores its class's share, not transfer, so beating it says nothing); paired
#    bootstrap intervals over test rows (`castlib.stats.paired_difference`). "Costs less":
#    CAST's measured latency per query against prefix-cached and naive ICL's, measured in
#    this one run on this machine (ratios of wall times, no repeat, no interval).
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/05_scalability_cost/`](../papermill_runs/results/full_cpu/05_scalability_cost/)
# (each run folder there holds the executed notebook `05_scalability_cost.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#05_scalability_cost`](../report/index.html#05_scalability_cost)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`): `m_grid=[4, 8, 16, 32, 64, 128, 256]`,
# `context_tokens=2048` on the embedded model (its own window is 32k; a 2k budget keeps CPU
# runs bounded and shows the bound), `seeds=[0]`, `n_test=500`, `k=4`,
# `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`, `alphas=None`,
# `n_prompts=16`, `n_samples=32`, `top_heads=None`, `n_corrupted=8`, `n_demos=16`,
# `train_steps=None` (`gpu.yaml`: the model's own window,
# `seeds=[0, 1, 2]`).

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = (
    "results/05_scalability_cost"  # tables, figures and results.json of this run (not committed)
)
sources = ["sst2"]
target = "financial_phrasebank"
m_grid = [2, 4]  # source samples: ICL demonstrations per prompt / CAST's selected samples
context_tokens = 200  # ICL context budget (CI: tiny, so the bound shows); None: the model's
cost_m = None  # m of the cost table; None: the largest m at which ICL fits
seeds = [0]
n_test = 16
k = 1  # CAST: demonstrations per few-shot prompt when extracting
n_candidates = 8  # CAST: candidates per source (raised to m when smaller)
n_queries = 4
n_tune = 2
layers = [6, 9]  # None: the method's default grid
alphas = [0.5, 1.0]  # None: the method's default
# the cost table also fits these at m = cost_m (steering and fine-tuning side by side)
cost_methods = ["task_vector", "icv", "function_vector", "i2cl", "lora_source", "kasa_source"]
n_prompts = 4  # task vector, function vector: source few-shot prompts
n_samples = 4  # ICV: source samples
top_heads = [2]  # function vector: candidate K; None: the method's default
n_corrupted = 2  # function vector: corrupted prompts
n_demos = 4  # I2CL: source demonstrations (context vectors, calibration); None: 5/label
train_steps = 4  # I2CL, LoRA, KaSA: optimiser steps; None: each method's default
collapse_share = 0.9  # a baseline predicting one label on more than this share has collapsed
batch_size = 16

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before the first import of tqdm.auto (by castlib), which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import castlib
from castlib import analysis, stats
from castlib.methods.shared_eval import measure
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "05_scalability_cost.ipynb")
nbtools.params_table(parameters)

# %%
tgt = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
config = lm.model.config
max_pos = getattr(config, "max_position_embeddings", None) or getattr(
    getattr(config, "text_config", None), "max_position_embeddings", None
)
budget = context_tokens or max_pos
print(f"context budget: {budget} tokens (model maximum: {max_pos})")

# %% tags=["nbval-ignore-output"]
from castlib.padding import encode


def run(method, seed, fitted=False):
    fit_mem = {"peak_mb": float("nan")}
    if not fitted:
        with nbtools.peak_memory(lm.device) as fit_mem:
            method.fit(lm, sources, tgt, seed=seed)
    with nbtools.peak_memory(lm.device) as mem, measure(lm.device) as stats:
        rec = method.evaluate(lm, tgt)  # inference only
    return {
        **rec,
        "most_predicted_share": analysis.most_predicted_share(rec["predictions"]["pred"]),
        "infer_peak_memory_mb": mem["peak_mb"],
        "latency_ms_per_query": 1000 * stats["seconds"] / rec["n"],
        "extract_seconds": rec["fit_seconds"],
        "extract_peak_memory_mb": fit_mem["peak_mb"],
    }


castlib.evaluate(lm, tgt, examples=tgt.test[:4], batch_size=batch_size)  # warm-up
records = []
jobs = [(s, m) for s in seeds for m in m_grid]
for seed in tqdm(seeds, desc="zero-shot"):
    zs = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
    records.append({**run(zs, seed), "m": 0, "fits_context": True})
for seed, m in tqdm(jobs, desc="m sweep"):
    icl = castlib.methods.get("cross_task_icl")(
        k=m, demo_choice="random", batch_size=batch_size, data_dir=data_dir
    )
    icl.fit(lm, sources, tgt, seed=seed)
    builder = icl.prompts(lm, tgt, tgt.test)
    lengths = [len(ids) for ids in encode(lm.tokenizer, [builder(tgt, x) for x in tgt.test])]
    if max(lengths) <= budget:
        records.append({**run(icl, seed, fitted=True), "m": m, "fits_context": True})
    else:  # does not fit: record the prompt length only
        records.append(
            {
                "model": lm.name,
                "method": "cross_task_icl",
                "seed": seed,
                "target": target,
                "m": m,
                "fits_context": False,
                "accuracy": None,
                "n": len(tgt.test),
                "prompt_tokens_per_query": float(np.mean(lengths)),
            }
        )
    cast_params = dict(
        m=m,
        k=k,
        n_candidates=max(n_candidates, m),
        n_queries=n_queries,
        n_tune=n_tune,
        batch_size=batch_size,
        data_dir=data_dir,
    )
    if layers is not None:
        cast_params["layers"] = layers
    if alphas is not None:
        cast_params["alphas"] = alphas
    cast = castlib.methods.get("cast")(**cast_params)
    records.append({**run(cast, seed), "m": m, "fits_context": True})
results = pd.DataFrame([nbtools.flat_record(r) for r in records])

# %% [markdown]
# ## Accuracy as m grows
# `prompt_tokens_per_query` is deterministic (the same prompts on every machine).

# %%
acc = (
    results.groupby(["method", "m"], sort=False)
    .agg(
        accuracy=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        prompt_tokens_per_query=("prompt_tokens_per_query", "mean"),
        fits_context=("fits_context", "all"),
    )
    .reset_index()
)
acc["accuracy_std"] = acc["accuracy_std"].fillna(0.0)
nbtools.write_table(acc, out, "accuracy_vs_m")
acc.round(3)

# %%
sweep = results[results["m"] > 0].dropna(subset=["accuracy"])
fig = plots.lines(
    sweep,
    x="m",
    y="accuracy",
    hue="method",
    logx=True,
    title=f"{target}: accuracy vs source samples m (dotted: zero-shot)",
)
ax = fig.axes[0]
ax.axhline(
    float(results.loc[results.method == "zero_shot", "accuracy"].mean()),
    color="0.4",
    linestyle=":",
    linewidth=1,
    label="zero-shot",
)
nbtools.save_figure(fig, out, "accuracy_vs_m")

# %%
fig = plots.lines(
    results[results["m"] > 0],
    x="m",
    y="prompt_tokens_per_query",
    hue="method",
    logx=True,
    title="Prompt tokens per query vs m",
)
fig.axes[0].axhline(budget, color="0.4", linestyle=":", linewidth=1)
nbtools.save_figure(fig, out, "prompt_tokens_vs_m")

# %% [markdown]
# ## Cost per query as a ratio to zero-shot
# Measured wall time and absolute peak memory of inference (CPU: peak resident set,
# sampled; CUDA: peak allocation; weights included, so the ratio shows what a method adds);
# they depend on the machine and its load, so this cell is not compared.
# `extraction_in_zero_shot_queries` = the one-off fit time / zero-shot latency per query.

# %% tags=["nbval-ignore-output"]
fits = results[(results["m"] > 0) & results["fits_context"].astype(bool)]
icl_fits = fits.loc[fits.method == "cross_task_icl", "m"]
m_cost = cost_m or int(icl_fits.max() if len(icl_fits) else max(m_grid))
shared = dict(
    k=k,
    m=m_cost,
    n_candidates=max(n_candidates, m_cost),
    n_queries=n_queries,
    n_tune=n_tune,
    layers=layers,
    n_prompts=n_prompts,
    n_samples=n_samples,
    top_heads=top_heads,
    n_corrupted=n_corrupted,
    n_demos=n_demos,
    steps=train_steps,
    batch_size=batch_size,
)
shared = {name: value for name, value in shared.items() if value is not None}
cost_records = []
icl_fits_at_cost = m_cost in set(icl_fits.astype(int))
for seed, label in tqdm([(s, lab) for s in seeds for lab in cost_methods], desc="cost"):
    method = nbtools.build_method(label, shared, {}, data_dir)
    cost_records.append({**run(method, seed), "method": label, "m": m_cost})
for seed in seeds if icl_fits_at_cost else []:  # naive ICL: the whole prompt for every query
    naive = castlib.methods.get("cross_task_icl")(
        k=m_cost, demo_choice="random", prefix_cache=False, batch_size=batch_size, data_dir=data_dir
    )
    cost_records.append({**run(naive, seed), "m": m_cost})
others = pd.DataFrame([nbtools.flat_record(r) for r in cost_records])

# %% tags=["nbval-ignore-output"]
zero = results[results.method == "zero_shot"].mean(numeric_only=True)
swept = results[
    ((results.method == "zero_shot") & (results.m == 0))
    | ((results.method != "zero_shot") & (results.m == m_cost))
]


def row_label(method, scoring):
    """Cross-task ICL's two timings apart: prefix-cached (the sweep) and naive (full)."""
    if method != "cross_task_icl":
        return method
    return f"{method} ({'prefix-cached' if scoring == 'demo_prefix_cached' else 'naive'})"


both = pd.concat([swept, others])
both["row"] = [row_label(m, sc) for m, sc in zip(both["method"], both["scoring"], strict=True)]
rows = []
for name, part in both.groupby("row", sort=False):
    if part["accuracy"].isna().all():
        continue
    r = part.mean(numeric_only=True)
    rows.append(
        {
            "method": name,
            "m": int(r["m"]),
            "accuracy": r["accuracy"],
            "most_predicted_share": r["most_predicted_share"],
            "trainable_params": int(r["trainable_params"]),
            "prompt_tokens_ratio": r["prompt_tokens_per_query"] / zero["prompt_tokens_per_query"],
            "latency_ratio": r["latency_ms_per_query"] / zero["latency_ms_per_query"],
            "peak_memory_ratio": r["infer_peak_memory_mb"] / zero["infer_peak_memory_mb"],
            "fit_in_zero_shot_queries": r["extract_seconds"] * 1000 / zero["latency_ms_per_query"],
            "latency_ms_per_query": r["latency_ms_per_query"],
            "infer_peak_memory_mb": r["infer_peak_memory_mb"],
            "fit_seconds": r["extract_seconds"],
            "fit_peak_memory_mb": r["extract_peak_memory_mb"],
        }
    )
cost = pd.DataFrame(rows)
nbtools.write_table(cost, out, "cost_ratios")
# results.json: the m sweep and the cost-table methods (rows with cost_only=True)
results_file = nbtools.write_results(
    results.to_dict("records") + others.assign(cost_only=True).to_dict("records"), out
)
cost.round(2)

# %%
fig = plots.bar(
    cost,
    x="method",
    y="latency_ratio",
    ylim=None,
    errorbar=None,
    title=f"Inference latency per query / zero-shot (m={m_cost})",
)
nbtools.save_figure(fig, out, "cost_latency_ratio")

# %% [markdown]
# ## Does CAST scale with source data? Paired comparisons
# Each row is CAST minus a reference on the same test rows (seeds pooled per row) with a 95%
# paired bootstrap interval (`castlib.stats.paired_difference`); `resolved` where it
# excludes zero. `reference_share` is the reference's most-predicted-label share
# (`castlib.analysis.most_predicted_share`, from its predictions): above `collapse_share`
# it is `collapsed` and does not count in the verdict. Naive ICL makes the same predictions
# as prefix-cached ICL (the same demonstrations), so it appears in the cost table only.


# %%
def runs_of(pool, method, m):
    return [r for r in pool if r["method"] == method and r["m"] == m and "predictions" in r]


def correct(runs):
    """[runs, rows] 0/1 correctness; every run must be on the same rows in the same order."""
    ids = runs[0]["predictions"]["id"]
    if any(r["predictions"]["id"] != ids for r in runs):
        raise ValueError("records to compare are not on the same test rows")
    return np.stack(
        [stats.correctness(r["predictions"]["pred"], r["predictions"]["gold"]) for r in runs]
    )


def compare(m, cast_runs, reference, ref_runs, ref_m):
    diff = stats.paired_difference(correct(cast_runs), correct(ref_runs))
    share = float(np.mean([r["most_predicted_share"] for r in ref_runs]))
    is_baseline = reference not in ("zero_shot", "cast")
    return {
        "m": m,
        "reference": reference,
        "reference_m": ref_m,
        "reference_share": share,
        "collapsed": bool(is_baseline and share > collapse_share),
        "difference": diff.estimate,
        "low": diff.low,
        "high": diff.high,
        "resolved": diff.excludes_zero,
        "n": diff.n,
        "seeds": len(cast_runs),
    }


zero_runs = runs_of(records, "zero_shot", 0)
comparisons = []
for m in m_grid:
    cast_runs = runs_of(records, "cast", m)
    comparisons.append(compare(m, cast_runs, "zero_shot", zero_runs, 0))
    if m != min(m_grid):
        comparisons.append(
            compare(m, cast_runs, "cast", runs_of(records, "cast", min(m_grid)), min(m_grid))
        )
    if runs_of(records, "cross_task_icl", m):  # only where ICL fits the context
        comparisons.append(
            compare(m, cast_runs, "cross_task_icl", runs_of(records, "cross_task_icl", m), m)
        )
    if m == m_cost:
        for label in cost_methods:
            comparisons.append(compare(m, cast_runs, label, runs_of(cost_records, label, m), m))
scaling = pd.DataFrame(comparisons)
nbtools.write_table(scaling, out, "scaling_comparisons")
scaling.round(3)

# %% [markdown]
# ## Conclusion (from this run's numbers)

# %%
icl_rows = acc[acc.method == "cross_task_icl"].set_index("m")
cast_rows = acc[acc.method == "cast"].set_index("m")
zero_acc = float(acc.loc[acc.method == "zero_shot", "accuracy"].iloc[0])
zero_tok = float(acc.loc[acc.method == "zero_shot", "prompt_tokens_per_query"].iloc[0])
lo, hi = min(m_grid), max(m_grid)
print(
    f"Cross-task ICL prompts grow from {nbtools.fmt(icl_rows.loc[lo, 'prompt_tokens_per_query'], 1)}"
    f" to {nbtools.fmt(icl_rows.loc[hi, 'prompt_tokens_per_query'], 1)} tokens per query as m goes "
    f"{lo} -> {hi}; CAST stays at {nbtools.fmt(cast_rows.loc[hi, 'prompt_tokens_per_query'], 1)}"
    f" (zero-shot: {nbtools.fmt(zero_tok, 1)})."
)
unfit = icl_rows.index[~icl_rows["fits_context"].astype(bool)].tolist()
print(
    f"ICL does not fit the {budget}-token context at m = {unfit}."
    if unfit
    else f"ICL fits the {budget}-token context at every m tried."
)


def line(row):
    ref = "CAST" if row["reference"] == "cast" else row["reference"]
    tag = (
        f", {ref} collapsed ({nbtools.fmt(100 * row['reference_share'], 0)}% one label): "
        "not counted"
        if row["collapsed"]
        else ""
    )
    return (
        f"CAST - {ref} (m={int(row['reference_m'])}) {nbtools.fmt(row['difference'])} "
        f"[{nbtools.fmt(row['low'])}, {nbtools.fmt(row['high'])}] "
        f"{stats.verdict((row['low'], row['high']), int(row['n']))}{tag}"
    )


for m, part in scaling.groupby("m", sort=True):
    accs = f"CAST {nbtools.fmt(cast_rows.loc[m, 'accuracy'])}, zero-shot {nbtools.fmt(zero_acc)}"
    print(f"m={m} ({accs}): " + "; ".join(line(r) for _, r in part.iterrows()) + ".")

top, bottom = max(m_grid), min(m_grid)
at_top = scaling[(scaling.m == top) & (scaling.reference == "zero_shot")].iloc[0]
trend = scaling[(scaling.m == top) & (scaling.reference == "cast")]
live = scaling[~scaling.reference.isin(["zero_shot", "cast"]) & ~scaling.collapsed]
collapsed = sorted(set(scaling.loc[scaling.collapsed, "reference"]))
beaten_by = sorted(set(live.loc[live.resolved & (live.difference < 0), "reference"]))
up = not trend.empty and bool(trend.iloc[0]["resolved"] and trend.iloc[0]["difference"] > 0)
down = not trend.empty and bool(trend.iloc[0]["resolved"] and trend.iloc[0]["difference"] < 0)
above_zero = bool(at_top["resolved"] and at_top["difference"] > 0)
below_zero = bool(at_top["resolved"] and at_top["difference"] < 0)
if below_zero or down or beaten_by:
    scales = "not supported"
elif above_zero and (up or trend.empty):
    scales = "supported"
else:
    scales = "not resolved"
print(
    f"'Scales with source data' is {scales} by this run: at the largest m={top} CAST is "
    f"{'resolved above' if above_zero else 'resolved below' if below_zero else 'not resolved against'}"
    f" zero-shot, "
    + (
        f"{'resolved above' if up else 'resolved below' if down else 'not resolved against'} "
        f"itself at m={bottom}, "
        if not trend.empty
        else "(one m: no trend), "
    )
    + (
        f"and resolved below {beaten_by}"
        if beaten_by
        else f"and resolved below none of the {live.reference.nunique()} baseline(s) that did not collapse"
    )
    + (f"; left out as collapsed: {collapsed}." if collapsed else "; no baseline collapsed.")
)
print(
    f"{len(seeds)} seed(s), seeds pooled per test row: "
    + (
        "the variance of the fit across seeds is not counted."
        if len(seeds) > 1
        else "fit variance not measured."
    )
)

# %% tags=["nbval-ignore-output"]
c = cost.set_index("method")
cached, naive = "cross_task_icl (prefix-cached)", "cross_task_icl (naive)"
print(
    f"Latencies measured once each, in this run on {lm.device}; ratios of wall times, no interval."
)
if "cast" in c.index:
    print(
        f"At m={m_cost}, CAST's latency is {nbtools.fmt(c.loc['cast', 'latency_ratio'], 2)}x "
        f"zero-shot's per query ({nbtools.fmt(c.loc['cast', 'latency_ms_per_query'], 1)} ms) and "
        f"its one-off extraction costs "
        f"{nbtools.fmt(c.loc['cast', 'fit_in_zero_shot_queries'], 0)} zero-shot queries."
    )
    for ref in (cached, naive):
        if ref not in c.index:
            print(f"{ref}: not run at m={m_cost} (ICL does not fit the context there).")
            continue
        ref_ms, cast_ms = c.loc[ref, "latency_ms_per_query"], c.loc["cast", "latency_ms_per_query"]
        saved = ref_ms - cast_ms
        payback = (
            f"its one-off fit is paid back after {nbtools.fmt(c.loc['cast', 'fit_seconds'] * 1000 / saved, 0)} queries"
            if saved > 0
            else "its one-off fit is never paid back at these latencies"
        )
        print(
            f"CAST vs {ref} ({nbtools.fmt(ref_ms, 1)} ms per query, "
            f"{nbtools.fmt(c.loc[ref, 'prompt_tokens_ratio'], 2)}x zero-shot's prompt tokens): "
            f"CAST's latency is {nbtools.fmt(cast_ms / ref_ms, 2)}x, "
            f"{'less' if cast_ms < ref_ms else 'not less'}; {payback}."
        )
if "cast" in c.index and cached in c.index:
    less = c.loc["cast", "latency_ms_per_query"] < c.loc[cached, "latency_ms_per_query"]
    print(
        f"'Costs less' in latency per query against the cheapest way to serve ICL "
        f"(prefix-cached): {'yes' if less else 'no'} in this run (one measurement each)."
    )
for name, row in c.drop(index=["zero_shot", cached, naive, "cast"], errors="ignore").iterrows():
    print(
        f"{name}: accuracy {nbtools.fmt(row['accuracy'])}, latency "
        f"{nbtools.fmt(row['latency_ratio'], 2)}x zero-shot, one-off fit "
        f"{nbtools.fmt(row['fit_in_zero_shot_queries'], 0)} zero-shot queries, "
        f"{int(row['trainable_params'])} trained parameters, most-predicted label "
        f"{nbtools.fmt(100 * row['most_predicted_share'], 0)}% of rows."
    )
