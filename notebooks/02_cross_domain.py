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
# # 02 Cross-domain transfer
#
# **What the paper claims** (abstract): "Extensive experiments across both cross-domain and
# cross-lingual transfer settings show that our method outperforms competitive baselines".
#
# CAST_SPEC.md, experiment 2: every method on every target task, mean and std over seeds.
# Label-free methods (labels): `zero_shot`; `cross_task_icl_random` and
# `cross_task_icl_similar` (Chatterjee et al. 2024); `task_vector` (Hendel et al. 2023);
# `icv` (Liu et al. 2024); `function_vector` (Todd et al. 2024); `i2cl` (Li et al. 2025);
# `lora_source` and `kasa_source` (parameter-updating: LoRA, Hu et al. 2022, and KaSA, Wang
# et al. 2025, trained on the m source samples CAST selects); `cast`. The steering methods
# choose their layer and alpha on held-out *source* rows (the `source` protocol).
#
# Methods that read gold labels of the *target* (CAST_SPEC step 5's `target_dev` protocol, a
# second race, never mixed with the label-free one): `cast_target_dev`,
# `task_vector_target_dev`, `icv_target_dev` and `function_vector_target_dev` (layer and
# alpha chosen on <= `n_tune` (at most 32) labelled target train rows, disjoint from the test
# rows), `lora_target_dev` and `kasa_target_dev` (trained on <= 32 labelled target
# examples), and `few_shot` (k target demonstrations). `methods="all"` runs every method
# registered in `castlib.methods`. All methods see the same seeded sample of test examples.
#
# Sources: pooled for every method except cross-task ICL, which Chatterjee et al. run per
# (source, target) pair: it is fitted once per source task (one source per prompt, `icl_k`
# demonstrations, 1 by default as in the paper), reported per source, and pooled as the
# **mean over the per-source runs** (its per-row correctness averaged over sources and seeds
# in the paired statistics).
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/02_cross_domain/`](../papermill_runs/results/full_cpu/02_cross_domain/)
# (each run folder there holds the executed notebook `02_cross_domain.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#02_cross_domain`](../report/index.html#02_cross_domain)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`, one run per target): `targets` =
# `arc_challenge`, `financial_phrasebank`, `medmcqa`, `sciq`, `social_iqa`; `sources` =
# `sst2`, `ag_news`, `commonsense_qa` (`gpu.yaml`: the eight sources of Chatterjee et al.
# available here, and `methods="all"`); `seeds=[0, 1, 2]`, `n_test=500`, `k=4`, `icl_k=1`,
# `m=32`, `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`, `cast_alphas=None`,
# `icv_alphas=None`, `n_prompts=16`, `n_samples=32`, `top_heads=None`, `n_corrupted=8`,
# `n_demos=16`, `train_steps=None`, `n_target=32`.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = (
    "results/02_cross_domain"  # tables, figures and results.json of this run (not committed)
)
targets = ["financial_phrasebank"]  # low-resource targets
sources = ["sst2"]  # high-resource sources (pooled)
methods = [
    "zero_shot",
    "cross_task_icl_random",
    "cross_task_icl_similar",
    "task_vector",
    "icv",
    "function_vector",
    "i2cl",
    "lora_source",
    "kasa_source",
    "cast",
    "few_shot",
    "cast_target_dev",
    "task_vector_target_dev",
    "icv_target_dev",
    "function_vector_target_dev",
    "lora_target_dev",
    "kasa_target_dev",
]  # or "all": every registered method
seeds = [0]
n_test = 16  # test examples per target (a seeded sample); None: all
k = 1  # demonstrations per prompt (few-shot, task/function vector, ICV, CAST)
icl_k = 1  # cross-task ICL: source demonstrations per prompt (Chatterjee et al.: 1)
m = 4  # CAST (and LoRA/KaSA on its selection): selected source samples
n_candidates = 8  # CAST and similar-demo ICL: candidates per source task
n_queries = 4  # CAST: unlabelled target inputs
n_tune = 2  # steering methods: rows for choosing (l*, alpha); target_dev: labelled target rows
layers = [6, 9]  # steering methods: candidate l*; None: the method's default grid
cast_alphas = None  # CAST: candidate alpha; None: the shared budgeted grid (n_configs)
icv_alphas = None  # ICV: candidate alpha; None: the shared budgeted grid (n_configs)
n_prompts = 4  # task vector, function vector: source few-shot prompts averaged
n_samples = 4  # ICV: source samples
top_heads = [2]  # function vector: candidate K (heads summed); None: the method's default
n_corrupted = 2  # function vector: corrupted prompts for the heads' indirect effects
n_demos = 4  # I2CL: source demonstrations (context vectors, calibration); None: 5/label
train_steps = 4  # I2CL, LoRA, KaSA: optimiser steps; None: each method's default
n_target = 8  # LoRA/KaSA on target_dev: labelled target examples, at most 32
method_params = {}  # extra parameters per method label, e.g. {"cast": {"gamma": 0.0}}
prompt_format = "plain"  # "plain" (the spec's prompts) or "chat" (the tokenizer's chat template)
batch_size = 16

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before the first import of tqdm.auto (by castlib), which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import pandas as pd
from tqdm.auto import tqdm

import castlib
from castlib import stats
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "02_cross_domain.ipynb")
nbtools.params_table(parameters)

# %%
plan = nbtools.method_plan(parameters)  # each method with the parameters it accepts
labels = plan.labels
target_tasks = {t: nbtools.sample_test(castlib.load_task(t, data_dir), n_test) for t in targets}
print("methods:", labels)
print({t: len(task.test) for t, task in target_tasks.items()})

# %% tags=["nbval-ignore-output"]
records, tuning = [], []
jobs = [
    (t, s, lab, group)
    for t in targets
    for s in seeds
    for lab in labels
    for group in nbtools.source_groups(lab, sources)  # cross-task ICL: one run per source
]
bar = tqdm(total=len(jobs), desc="cross-domain (fits)")
for target, seed in dict.fromkeys((t, s) for t, s, _, _ in jobs):
    tgt = target_tasks[target]
    fitted = []
    for _, _, label, group in [j for j in jobs if j[:2] == (target, seed)]:
        method = plan.build(label)
        fitted.append((label, group, method.fit(lm, group, tgt, seed=seed)))
        bar.update()
    # all methods of this (target, seed) on the same test rows; the last-position steering
    # ones share each prompt's prefix pass (castlib.methods.evaluate_methods: the same records
    # as method.evaluate one by one)
    evaluated = castlib.methods.evaluate_methods(lm, [m for _, _, m in fitted], tgt)
    for (label, group, method), rec in zip(fitted, evaluated, strict=True):
        records.append(
            nbtools.flat_record(
                rec,
                method=label,
                registry_method=rec["method"],
                source="+".join(group),
                one_source=method.one_source,
                protocol=rec.get("protocol", rec["params"].get("train_on")),
            )
        )
        tuning += [
            {"target": target, "seed": seed, "method": label, "source": "+".join(group), **g}
            for g in rec.get("tuning_grid", [])
        ]
bar.close()
results = pd.DataFrame(records)

# %% [markdown]
# ## Accuracy per target and method (mean and std over seeds)
# A method fitted once per source (cross-task ICL) is first averaged over its sources within
# each seed (the pooled number); its per-source results follow below.

# %%
per_seed = results.groupby(["target", "method", "seed"], sort=False, as_index=False)[
    ["accuracy", "macro_f1"]
].mean()
summary = nbtools.mean_std(per_seed, ["target", "method"])
nbtools.write_table(summary, out, "summary")
summary

# %%
table = summary["mean"].unstack("target").reindex(labels)
table["mean over targets"] = table.mean(axis=1)
table.round(3)

# %% [markdown]
# ## Cross-task ICL per (source, target) pair (mean and std over seeds)

# %%
per_source = nbtools.mean_std(
    results[results["one_source"].astype(bool)], ["target", "method", "source"]
)
nbtools.write_table(per_source, out, "per_source")
per_source

# %%
results[
    [
        "target",
        "method",
        "source",
        "seed",
        "protocol",
        "accuracy",
        "macro_f1",
        "layer",
        "alpha",
        "prompt_tokens_per_query",
        "trainable_params",
    ]
].round(3)

# %%
fig = plots.bar(
    results,
    x="target",
    y="accuracy",
    hue="method",
    title=f"Cross-domain transfer (sources: {', '.join(sources)})",
)
nbtools.save_figure(fig, out, "accuracy_by_target_method")
nbtools.write_results(records, out)
if tuning:
    nbtools.write_table(pd.DataFrame(tuning), out, "tuning_grid")

# %% [markdown]
# ## Conclusion (from this run's numbers)
# Two races, kept apart. **Label-free**: CAST against every method whose record says
# `uses_target_labels` is false (except `zero_shot`, the reference). **Labelled target rows**:
# `cast_target_dev` against the methods that read target labels (`*_target_dev`, `few_shot`).

# %%
means = summary["mean"].unstack("method")
labelled = sorted(set(results.loc[results["uses_target_labels"].astype(bool), "method"]))
baselines = [m for m in means.columns if m not in ("zero_shot", "cast", *labelled)]
references = [m for m in labelled if m != "cast_target_dev"]
wins = wins_dev = 0
for target, row in means.iterrows():
    if "zero_shot" not in row:
        continue
    lines = []
    if "cast" in row:
        best = max(baselines, key=lambda m: row[m]) if baselines else None
        line = (
            f"{target}: CAST {nbtools.verdict(row['cast'], row['zero_shot'])} zero-shot "
            f"({nbtools.fmt(row['cast'])} vs {nbtools.fmt(row['zero_shot'])})"
        )
        if best is not None:
            line += (
                f" and {nbtools.verdict(row['cast'], row[best])} the best label-free "
                f"baseline {best} ({nbtools.fmt(row[best])})"
            )
            wins += row["cast"] > row[best]
        lines.append(line + ".")
    if "cast_target_dev" in row:
        best = max(references, key=lambda m: row[m]) if references else None
        line = (
            f"{target}, labelled target rows: cast_target_dev "
            f"{nbtools.verdict(row['cast_target_dev'], row['zero_shot'])} zero-shot "
            f"({nbtools.fmt(row['cast_target_dev'])})"
        )
        if best is not None:
            line += (
                f" and {nbtools.verdict(row['cast_target_dev'], row[best])} the best "
                f"labelled-target method {best} ({nbtools.fmt(row[best])}); all: "
                + ", ".join(f"{m} {nbtools.fmt(row[m])}" for m in references)
            )
            wins_dev += row["cast_target_dev"] > row[best]
        lines.append(line + ".")
    print("\n".join(lines))
if "cast" in means.columns and baselines:
    print(
        f"CAST beats every label-free baseline on {wins} of {len(means)} target(s) "
        f"(seeds {seeds}, n={n_test} test examples each)."
    )
if "cast_target_dev" in means.columns and references:
    print(
        f"With labelled target rows, cast_target_dev beats every other labelled-target method "
        f"on {wins_dev} of {len(means)} target(s)."
    )

# %% [markdown]
# ## What the evidence resolves (paired, on the same test rows)
# Per target: the majority-class and chance rates of the evaluated rows, and per method the
# accuracy with a 95% paired-bootstrap interval over test rows (seeds pooled; cross-task ICL's
# per-source runs pooled too); CAST's difference to zero-shot and to the best label-free
# baseline, then `cast_target_dev`'s difference to zero-shot and to the best other method that
# reads target labels, each with its interval and an exact McNemar p-value (`castlib.stats`).
# A difference is called resolved only where its interval excludes zero.

# %%
paired = stats.target_table(records, reference="zero_shot", focus="cast")
nbtools.write_table(paired, out, "paired_stats")
for line in stats.conclusions(paired, method="cast"):
    print(line)
if "cast_target_dev" in set(results["method"]):
    paired_dev = stats.target_table(
        records, reference="zero_shot", focus="cast_target_dev", baselines="target_labels"
    )
    nbtools.write_table(paired_dev, out, "paired_stats_target_dev")
    for line in stats.conclusions(paired_dev, method="cast_target_dev", baselines="target_labels"):
        print(line)
paired[
    [
        "target",
        "method",
        "n",
        "runs",
        "majority_rate",
        "chance_rate",
        "accuracy",
        "acc_low",
        "acc_high",
    ]
].round(3)
