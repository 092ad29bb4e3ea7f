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
# # 03 Cross-lingual transfer
#
# **What the paper claims** (abstract): CAST outperforms competitive baselines "across both
# cross-domain and cross-lingual transfer settings".
#
# CAST_SPEC.md, experiment 3: English source tasks steer target tasks in other languages.
# Pairs come from the datasets' `meta.json` (`family`, `language`, `role`): within a family
# (SIB-200 topics, NusaX sentiment, AfriSenti with TweetEval English, XCOPA), the English
# member is the source and the other members are targets (`pairs="auto"`), or a list of
# `[source, target]` pairs. Label words are English in every language, so label spaces
# match.
#
# Every method is fitted on one source per (source, target) pair, as Chatterjee et al. run
# cross-task ICL (`cross_task_icl_random`, `icl_k` = 1 demonstration by default); with one
# English source per target, the per-source result is the pooled one. Two races are kept apart,
# and every steering baseline runs in both: label-free methods (`zero_shot`,
# `cross_task_icl_random`, `task_vector`, `icv`, `function_vector`, `i2cl`, `lora_source`,
# `kasa_source`, `cast`; the steering methods choose layer and alpha, and I2CL whether to
# inject at all, on held-out source rows) and methods that read labelled *target* rows
# (CAST_SPEC step 5's `target_dev` protocol: `cast_target_dev`, `task_vector_target_dev`,
# `icv_target_dev`, `function_vector_target_dev` choose layer and alpha on <= `n_tune` (at
# most 32) labelled target train rows, disjoint from the test rows; `i2cl_target_dev`
# calibrates its coefficients on labelled target rows as the I2CL authors' transfer script
# does, within <= `n_target` of them; `lora_target_dev`, `kasa_target_dev` train on <= 32 of
# them). Every steering method's choice includes the unsteered model.
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/03_cross_lingual/`](../papermill_runs/results/full_cpu/03_cross_lingual/)
# (each run folder there holds the executed notebook `03_cross_lingual.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#03_cross_lingual`](../report/index.html#03_cross_lingual)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`, one run per pair and seed): SIB-200 eng -> swh
# and -> yor, NusaX eng -> jav, TweetEval eng -> AfriSenti hau; seeds 0, 1, 2, `n_test=500`,
# `k=4`, `icl_k=1`, `m=32`, `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`,
# `cast_alphas=None`, `top_heads=None`, `n_corrupted=8`, `n_demos=16`,
# `train_steps=None` (`gpu.yaml`: `pairs="auto"`, every family member, `methods="all"`).
# The archived runs predate the task vector, ICV and `i2cl_target_dev` in this list.
# `n_demos=None` gives I2CL the authors' 5 demonstrations per label (stratified); a target
# with more than 6 labels (SIB-200 has 7) then needs `method_params={"i2cl_target_dev":
# {"demos_per_class": 4}}` to fit its calibration rows in the 32 labelled target rows.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = (
    "results/03_cross_lingual"  # tables, figures and results.json of this run (not committed)
)
pairs = [["sib200_eng", "sib200_swh"]]  # [source, target] pairs; "auto": from meta.json
families = None  # only these families when pairs is auto; None: all
methods = [
    "zero_shot",
    "cross_task_icl_random",
    "task_vector",
    "icv",
    "function_vector",
    "i2cl",
    "lora_source",
    "kasa_source",
    "cast",
    "cast_target_dev",
    "task_vector_target_dev",
    "icv_target_dev",
    "function_vector_target_dev",
    "i2cl_target_dev",
    "lora_target_dev",
    "kasa_target_dev",
]  # or "all"
seeds = [0]
n_test = 16
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
n_demos = 4  # I2CL: demonstrations in all, stratified by label; None: 5 per label
train_steps = 4  # I2CL, LoRA, KaSA: optimiser steps; None: each method's default
n_target = 8  # LoRA/KaSA/I2CL on target_dev: labelled target examples, at most 32
method_params = {}  # extra parameters per method label, e.g. {"cast": {"gamma": 0.0}}
prompt_format = "plain"  # "plain" (the spec's prompts) or "chat" (the tokenizer's chat template)
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
from castlib import stats
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "03_cross_lingual.ipynb")
nbtools.params_table(parameters)

# %%
plan = nbtools.method_plan(parameters)  # each method with the parameters it accepts
import json

root = castlib.tasks.resolve_data_dir(data_dir)
meta = {
    p.parent.name: json.loads(p.read_text(encoding="utf-8"))
    for p in sorted(root.glob("*/meta.json"))
}
if pairs == "auto":
    pairs = []
    for fam in sorted({m["family"] for m in meta.values() if m.get("family")}):
        if families is not None and fam not in families:
            continue
        members = [n for n, m in meta.items() if m.get("family") == fam]
        english = [n for n in members if meta[n].get("language") == "en"]
        pairs += [[src, tgt] for src in english for tgt in members if tgt not in english]
pair_table = pd.DataFrame(
    [
        {
            "source": s,
            "target": t,
            "family": meta[t].get("family"),
            "language": meta[t].get("language_name", meta[t].get("language")),
            "resource_level": meta[t].get("resource_level"),
            "parallel": meta[t].get("parallel"),
        }
        for s, t in pairs
    ]
)
labels = plan.labels
pair_table

# %% tags=["nbval-ignore-output"]
records = []
target_tasks = {}
jobs = [(s, t, seed, lab) for s, t in pairs for seed in seeds for lab in labels]
bar = tqdm(total=len(jobs), desc="cross-lingual (fits)")
for source, target, seed in dict.fromkeys(j[:3] for j in jobs):
    if target not in target_tasks:
        target_tasks[target] = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
    tgt = target_tasks[target]
    fitted = []
    for label in [j[3] for j in jobs if j[:3] == (source, target, seed)]:
        method = plan.build(label)
        fitted.append((label, method.fit(lm, [source], tgt, seed=seed)))
        bar.update()
    # the last-position steering methods share each test prompt's prefix pass
    # (castlib.methods.evaluate_methods: the same records as method.evaluate one by one)
    evaluated = castlib.methods.evaluate_methods(lm, [m for _, m in fitted], tgt)
    info = pair_table[(pair_table.source == source) & (pair_table.target == target)].iloc[0]
    for (label, _), rec in zip(fitted, evaluated, strict=True):
        records.append(
            nbtools.flat_record(
                rec,
                method=label,
                registry_method=rec["method"],
                source=source,
                protocol=rec.get("protocol", rec["params"].get("train_on")),
                family=info["family"],
                language=info["language"],
                resource_level=info["resource_level"],
            )
        )
bar.close()
results = pd.DataFrame(records)

# %% [markdown]
# ## Accuracy per target language and method (mean and std over seeds)

# %%
summary = nbtools.mean_std(results, ["family", "language", "target", "method"])
nbtools.write_table(summary, out, "summary")
summary

# %%
table = summary["mean"].unstack("method").reindex(columns=labels)
table.round(3)

# %%
fig = plots.bar(
    results,
    x="language",
    y="accuracy",
    hue="method",
    title="Cross-lingual transfer from English sources",
)
nbtools.save_figure(fig, out, "accuracy_by_language_method")
results_file = nbtools.write_results(records, out)

# %% [markdown]
# ## Conclusion (from this run's numbers)
# Label-free: CAST against every method whose record says `uses_target_labels` is false.
# Labelled target rows, a separate race: `cast_target_dev` against the other methods that
# read target labels.

# %%
means = summary["mean"].unstack("method")
labelled = sorted(set(results.loc[results["uses_target_labels"].astype(bool), "method"]))
others = [m for m in means.columns if m != "cast" and m not in labelled]
references = [m for m in labelled if m != "cast_target_dev"]
if "cast" in means.columns and others:
    beats_zero = int((means["cast"] > means.get("zero_shot", np.inf)).sum())
    beats_all = int((means["cast"] > means[others].max(axis=1)).sum())
    print(
        f"CAST beats zero-shot on {beats_zero} of {len(means)} cross-lingual target(s) "
        f"and every label-free baseline ({', '.join(others)}) on {beats_all}."
    )
    for (_fam, lang, target), row in means.iterrows():
        print(
            f"  {target} ({lang}): CAST {nbtools.fmt(row['cast'])}, "
            + ", ".join(f"{m} {nbtools.fmt(row[m])}" for m in others)
        )
if "cast_target_dev" in means.columns and references:
    beats_refs = int((means["cast_target_dev"] > means[references].max(axis=1)).sum())
    print(
        f"With labelled target rows, cast_target_dev beats every other labelled-target method "
        f"({', '.join(references)}) on {beats_refs} of {len(means)} target(s)."
    )
    for (_fam, lang, target), row in means.iterrows():
        print(
            f"  {target} ({lang}): cast_target_dev {nbtools.fmt(row['cast_target_dev'])}, "
            + ", ".join(f"{m} {nbtools.fmt(row[m])}" for m in references)
        )

# %% [markdown]
# ## What the evidence resolves (paired, on the same test rows)
# Per target: the majority-class and chance rates of the evaluated rows, and per method the
# accuracy with a 95% paired-bootstrap interval over test rows (seeds pooled); CAST's difference
# to zero-shot and to the best label-free baseline, then `cast_target_dev`'s difference to
# zero-shot and to the best other method that reads target labels, each with its interval and
# an exact McNemar p-value (`castlib.stats`). A difference is called resolved only where its
# interval excludes zero.

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
    ["target", "method", "n", "majority_rate", "chance_rate", "accuracy", "acc_low", "acc_high"]
].round(3)
