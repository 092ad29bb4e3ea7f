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
# # 04 Ablations
#
# **What the paper claims** (abstract): CAST's two ingredients are the selection of
# "influential and diverse samples from high-resource tasks" and "their contrastive
# representation-enhanced activations".
#
# CAST_SPEC.md, experiment 4. From the default CAST (`selection="cast"`,
# `contrast="mean"`, one steering layer, no norm preservation) one factor changes at a time:
# - selection: `random`, `similarity`, `influence` (gamma = 0), `diversity` (k-center),
#   `cast`;
# - contrast: `mean` (mean delta), `pca` (first principal direction of the uncentred deltas,
#   sign-aligned with and scaled to the mean), `fewshot_only` (mean few-shot state as a
#   replacement target, no contrast);
# - layers: `layer_window` = 1 (l* only) vs w > 1 (l*..l*+w-1, alpha split evenly);
# - norm preservation: off vs on;
# - embedding text of the selection: `prompt` (the zero-shot prompt P0(x), the spec's) vs `input`
#   (the bare input, without the task instruction, role names or answer prefix), so that source
#   candidates and target queries are compared on content rather than on prompt format.
#
# (l*, alpha) are re-chosen for every variant by the same `source` protocol. Every record carries
# CAST's selection log (`selection_log`: per greedy step the chosen sample, its coverage gain,
# diversity penalty and objective; the number of query-candidate edges of the kNN graph).
#
# **Which embedding should be the default** is measured on labelled target *dev* rows (a seeded
# sample of at most 32 rows of the target's train pool, the `target_dev` budget; never test
# rows): the CAST fitted with each embedding is scored there, and the paired difference over the
# dev rows decides. Only a difference whose 95% paired-bootstrap interval excludes zero counts as
# decisive; otherwise the spec's default (`prompt`) stays. The dev rows may include some of the
# unlabelled target inputs CAST used as queries (both embeddings use the same queries).
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/04_ablations/`](../papermill_runs/results/full_cpu/04_ablations/)
# (each run folder there holds the executed notebook `04_ablations.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#04_ablations`](../report/index.html#04_ablations)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`): all five selections, all three contrasts,
# `layer_windows=[1, 3]`, `norm_preserving=[False, True]`, `seeds=[0, 1, 2]`, `n_test=500`,
# `k=4`, `m=32`, `n_candidates=256`, `n_queries=64`, `n_tune=16`, `layers=None`,
# `alphas=None`, `embed_texts=["prompt", "input"]`, `n_dev=32` (`gpu.yaml`: five targets, five
# pooled sources, `layer_windows=[1, 3, 5]`).

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = "results/04_ablations"  # tables, figures and results.json of this run (not committed)
targets = ["financial_phrasebank"]
sources = ["sst2"]
selections = ["random", "cast"]  # of random, similarity, influence, diversity, cast
contrasts = ["mean", "pca"]  # of mean, pca, fewshot_only
layer_windows = [1, 3]  # 1: single layer; w > 1: l*..l*+w-1
norm_preserving = [False, True]
embed_texts = ["prompt", "input"]  # of prompt, input: what the selection embeds
seeds = [0]
n_test = 16
m = 4
k = 1
n_candidates = 8
n_queries = 4
n_tune = 2
layers = [6, 9]  # None: the method's default grid
alphas = [0.5, 1.0]  # None: the method's default
n_dev = 32  # labelled target train rows, at most 32, on which the embeddings are compared
batch_size = 16

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before the first import of tqdm.auto (by castlib), which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import json

import numpy as np
import pandas as pd
from IPython.display import display
from tqdm.auto import tqdm

import castlib
from castlib import stats
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "04_ablations.ipynb")
nbtools.params_table(parameters)

# %%
if isinstance(n_dev, bool) or not isinstance(n_dev, int) or not 1 <= n_dev <= 32:
    raise ValueError(f"n_dev must be an int in 1..32 (the target_dev budget), got {n_dev!r}")
base = {
    "selection": "cast",
    "contrast": "mean",
    "layer_window": 1,
    "norm_preserving": False,
    "embed_text": castlib.methods.get("cast").Params().embed_text,
}
axes = {
    "selection": selections,
    "contrast": contrasts,
    "layer_window": layer_windows,
    "norm_preserving": norm_preserving,
    "embed_text": embed_texts,
}
variants = []  # (ablation, value, params): one factor changed from the default
for axis, values in axes.items():
    for value in values:
        variants.append((axis, value, {**base, axis: value}))
configs = {}  # distinct configurations, each fitted once per (target, seed)
for _, _, cfg in variants:
    configs.setdefault(tuple(sorted(cfg.items())), cfg)
common = dict(
    m=m,
    k=k,
    n_candidates=n_candidates,
    n_queries=n_queries,
    n_tune=n_tune,
    batch_size=batch_size,
    data_dir=data_dir,
)
if layers is not None:
    common["layers"] = layers
if alphas is not None:
    common["alphas"] = alphas
print(f"{len(variants)} variants, {len(configs)} distinct CAST configurations")
pd.DataFrame([{"ablation": a, "value": v, "is_default": cfg == base} for a, v, cfg in variants])

# %% tags=["nbval-ignore-output"]
fitted, zero_acc, dev = {}, {}, {}
target_tasks = {t: nbtools.sample_test(castlib.load_task(t, data_dir), n_test) for t in targets}
embed_keys = {  # the configurations that differ from the default in the embedding text only
    tuple(sorted({**base, "embed_text": e}.items())): e for e in embed_texts
}
jobs = [(t, s, key) for t in targets for s in seeds for key in configs]
methods_of = {}
for target, seed, key in tqdm(jobs, desc="ablations (fits)"):
    method = castlib.methods.get("cast")(**common, **configs[key])
    methods_of[(target, seed, key)] = method.fit(lm, sources, target_tasks[target], seed=seed)
# every fitted variant of a target scored on its test rows in one sweep: each prompt's prefix
# runs once, then one token per variant (castlib.methods.evaluate_methods; the same records as
# method.evaluate one by one)
for target in targets:
    jobs_t = [job for job in methods_of if job[0] == target]
    recs = castlib.methods.evaluate_methods(
        lm, [methods_of[job] for job in jobs_t], target_tasks[target]
    )
    fitted.update(zip(jobs_t, recs, strict=True))
    embed_jobs = [job for job in jobs_t if job[2] in embed_keys]
    dev_recs = castlib.methods.evaluate_methods(  # the same seeded dev rows of the train pool
        lm,
        [methods_of[job] for job in embed_jobs],
        target_tasks[target],
        split="train",
        sample=n_dev,
        sample_seed=0,
    )
    dev.update(
        ((t, s, embed_keys[k]), r) for (t, s, k), r in zip(embed_jobs, dev_recs, strict=True)
    )
for target in targets:
    zs = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
    zero_acc[target] = zs.fit(lm, sources, target_tasks[target]).evaluate(lm, target_tasks[target])[
        "accuracy"
    ]
records = []
for target in targets:
    for seed in seeds:
        for axis, value, cfg in variants:
            rec = fitted[(target, seed, tuple(sorted(cfg.items())))]
            records.append(
                nbtools.flat_record(
                    rec,
                    ablation=axis,
                    variant=str(value),
                    is_default=cfg == base,
                    zero_shot_accuracy=zero_acc[target],
                    gain_over_zero_shot=rec["accuracy"] - zero_acc[target],
                )
            )
results = pd.DataFrame(records)

# %% [markdown]
# ## Accuracy per ablation and variant (mean and std over targets and seeds)

# %%
summary = nbtools.mean_std(results, ["ablation", "variant"])
summary["gain_over_zero_shot"] = (
    results.groupby(["ablation", "variant"], sort=False)["gain_over_zero_shot"].mean().round(3)
)
nbtools.write_table(summary, out, "summary")
summary

# %%
pd.Series(zero_acc, name="zero_shot_accuracy").round(3).to_frame()

# %%
results[["target", "seed", "ablation", "variant", "accuracy", "layer", "alpha"]].round(3)

# %%
fig = plots.facet_lines(
    results.assign(variant=results["variant"].astype(str)),
    x="variant",
    y="accuracy",
    col="ablation",
    reference=float(np.mean(list(zero_acc.values()))),
    title="CAST ablations (dotted: zero-shot)",
)
nbtools.save_figure(fig, out, "ablations")
results_file = nbtools.write_results(records, out)

# %% [markdown]
# ## The selection logs
# Per variant (mean over targets and seeds): the query-candidate edges of the kNN graph, the
# coverage F(S) of the selection (the mean over target nodes of the best influence a selected
# sample has on them, between 0 and 1) and the summed coverage gains and diversity penalties of
# the greedy steps (`cast` and `influence` selections only: the others build no graph).

# %%
log_rows = []
for rec in records:
    log = json.loads(rec["selection_log"])
    if "n_query_candidate_edges" not in log:
        continue
    log_rows.append(
        {
            "ablation": rec["ablation"],
            "variant": rec["variant"],
            "n_queries": log["n_queries"],
            "n_query_candidate_edges": log["n_query_candidate_edges"],
            "coverage": log["coverage"],
            "sum_coverage_gain": sum(s["coverage_gain"] for s in log["steps"]),
            "sum_diversity_penalty": sum(s["diversity_penalty"] for s in log["steps"]),
        }
    )
selection_logs = (
    pd.DataFrame(log_rows).groupby(["ablation", "variant"], sort=False).mean().round(4)
    if log_rows
    else pd.DataFrame()
)
nbtools.write_table(selection_logs, out, "selection_logs")
selection_logs

# %% [markdown]
# ## Which embedding text should the default be (target dev rows, never test rows)

# %%
embed_rows, embed_choice = [], None
if len(embed_texts) >= 2 and dev:
    correct = {}  # embed_text -> [seeds, dev rows of all targets]
    for e in embed_texts:
        per_seed = []
        for seed in seeds:
            row = []
            for target in targets:
                preds = dev[(target, seed, e)]["predictions"]
                row += stats.correctness(preds["pred"], preds["gold"]).tolist()
            per_seed.append(row)
        correct[e] = np.array(per_seed)
    default_embed = base["embed_text"]
    for e in embed_texts:
        acc = stats.accuracy_interval(correct[e])
        line = {"embed_text": e, "dev_accuracy": acc.estimate, "low": acc.low, "high": acc.high}
        if e != default_embed:
            diff = stats.paired_difference(correct[e], correct[default_embed])
            line.update(
                diff_vs_default=diff.estimate,
                diff_low=diff.low,
                diff_high=diff.high,
                verdict=stats.verdict(diff, diff.n),
            )
        embed_rows.append(line)
    embed_table = pd.DataFrame(embed_rows).round(3)
    decisive = [
        r for r in embed_rows if r.get("verdict") == "resolved" and r["diff_vs_default"] > 0
    ]
    embed_choice = (
        max(decisive, key=lambda r: r["diff_vs_default"])["embed_text"]
        if decisive
        else default_embed
    )
    nbtools.write_table(embed_table, out, "embed_text_dev")
    n_rows = correct[default_embed].shape[1]
    print(
        f"Dev rows: {n_rows} target train rows ({', '.join(targets)}), seeds {seeds}. "
        + (
            f"{embed_choice} beats {default_embed} decisively: the default should be {embed_choice}."
            if embed_choice != default_embed
            else f"No embedding beats the spec's default ({default_embed}) decisively at "
            f"n = {n_rows}: the default stays {default_embed}."
        )
    )
    display(embed_table)
else:
    print("embed_texts has fewer than two values: no embedding comparison in this run.")

# %% [markdown]
# ## Conclusion (from this run's numbers)

# %%
default_label = {k: str(v) for k, v in base.items()}
for axis in axes:
    part = summary.xs(axis, level="ablation")["mean"]
    best = part[part == part.max()].index.tolist()
    default = default_label[axis]
    line = f"{axis}: best {', '.join(best)} ({nbtools.fmt(part.max())})"
    if default in part.index:
        rank = "among the best" if part[default] >= part.max() else "not the best"
        line += f"; CAST's default {default} scores {nbtools.fmt(part[default])} ({rank})"
    print(line + f"; zero-shot {nbtools.fmt(float(np.mean(list(zero_acc.values()))))}.")
if embed_choice is not None:
    print(
        f"embed_text default measured on target dev rows (not on the test rows above): "
        f"{embed_choice} (the spec's is {base['embed_text']})."
    )
