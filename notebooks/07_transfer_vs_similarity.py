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
# # 07 Transfer vs task similarity
#
# **What the paper claims** (abstract): the ICL-enhanced activations "have consistent
# patterns across different tasks", which is what lets a source task's activations adapt
# the model to a different target task.
#
# CAST_SPEC.md, analysis 7: for every (source, target) pair, CAST's gain over zero-shot
# against the cosine between the source's and the target's ICL enhancement vectors
# `v_l = mean_x [h_l(Pk(x; D)) - h_l(P0(x))]` (in-task demonstrations, as in notebook 01;
# the target's uses a few labelled target train examples, for this analysis only). The
# cosine is read at `similarity_layer` and at the l* CAST chose.
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/07_transfer_vs_similarity/`](../papermill_runs/results/full_cpu/07_transfer_vs_similarity/)
# (each run folder there holds the executed notebook `07_transfer_vs_similarity.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#07_transfer_vs_similarity`](../report/index.html#07_transfer_vs_similarity)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`): `sources` = `sst2`, `ag_news`, `mnli`,
# `commonsense_qa`; `targets` = `financial_phrasebank`, `arc_challenge`, `social_iqa`,
# `sciq`; `seeds=[0]`, `n_test=500`, `n_examples=32`, `k=4`, `m=32`, `n_candidates=256`,
# `n_queries=64`, `n_tune=32`, `layers=None`, `alphas=None` (`gpu.yaml`: 8 sources x 5
# targets, 3 seeds).

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = "results/07_transfer_vs_similarity"  # tables, figures and results.json of this run (not committed)
sources = ["sst2", "ag_news"]  # each source steers each target on its own
targets = ["financial_phrasebank"]
seeds = [0]
n_test = 16
n_examples = 6  # examples per task for the enhancement vectors
similarity_layer = None  # None: L // 2
m = 4
k = 1
n_candidates = 8
n_queries = 4
n_tune = 2
layers = [6, 9]  # None: the method's default grid
alphas = [0.5, 1.0]  # None: the method's default
batch_size = 16

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before the first import of tqdm.auto (by castlib), which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import castlib
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "07_transfer_vs_similarity.ipynb")
nbtools.params_table(parameters)

# %% tags=["nbval-ignore-output"]
sim_layer = similarity_layer if similarity_layer is not None else lm.n_layers // 2
tasks_all = nbtools.load_tasks(list(sources) + list(targets), data_dir)
target_tasks = {t: nbtools.sample_test(tasks_all[t], n_test) for t in targets}
enh = {}
for name, task in tqdm(tasks_all.items(), desc="enhancement vectors"):
    d, _, _ = nbtools.icl_deltas(lm, task, n_examples, k, seed=0, batch_size=batch_size)
    enh[name] = d.mean(0)  # [L, hidden]
cast_params = dict(
    m=m,
    k=k,
    n_candidates=n_candidates,
    n_queries=n_queries,
    n_tune=n_tune,
    batch_size=batch_size,
    data_dir=data_dir,
)
if layers is not None:
    cast_params["layers"] = layers
if alphas is not None:
    cast_params["alphas"] = alphas
records = []
for target in tqdm(targets, desc="targets"):
    tgt = target_tasks[target]
    zero = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
    jobs = [(source, seed) for source in sources for seed in seeds]
    fitted = [
        castlib.methods.get("cast")(**cast_params).fit(lm, [source], tgt, seed=seed)
        for source, seed in tqdm(jobs, desc=f"{target}: fits", leave=False)
    ]
    # the unsteered model and every fitted source scored on the same test rows in one sweep:
    # each prompt's prefix runs once, then one token per method (castlib.methods.evaluate_methods;
    # the same records as method.evaluate one by one)
    zero_rec, *recs = castlib.methods.evaluate_methods(
        lm, [zero.fit(lm, sources, tgt), *fitted], tgt
    )
    zero_acc = zero_rec["accuracy"]
    for (source, _seed), rec in zip(jobs, recs, strict=True):
        l_star = rec["layer"]
        records.append(
            nbtools.flat_record(
                rec,
                source=source,
                zero_shot_accuracy=zero_acc,
                gain=rec["accuracy"] - zero_acc,
                similarity_layer=sim_layer,
                cosine=float(
                    torch.cosine_similarity(enh[source][sim_layer], enh[target][sim_layer], dim=0)
                ),
                cosine_at_l_star=float(
                    torch.cosine_similarity(enh[source][l_star], enh[target][l_star], dim=0)
                )
                if l_star is not None  # None: tuning kept the unsteered model
                else float("nan"),
            )
        )
results = pd.DataFrame(records)

# %% [markdown]
# ## Gain over zero-shot and enhancement-vector cosine per pair

# %%
pairs = (
    results.groupby(["target", "source"], sort=False)
    .agg(
        cosine=("cosine", "mean"),
        cosine_at_l_star=("cosine_at_l_star", "mean"),
        zero_shot=("zero_shot_accuracy", "mean"),
        cast=("accuracy", "mean"),
        gain=("gain", "mean"),
        gain_std=("gain", "std"),
    )
    .reset_index()
)
pairs["gain_std"] = pairs["gain_std"].fillna(0.0)
nbtools.write_table(pairs, out, "pairs")
pairs.round(3)

# %%
fig = plots.scatter(
    pairs,
    x="cosine",
    y="gain",
    hue="target",
    style="target",
    fit=True,
    label="source",
    title=f"Gain over zero-shot vs cosine of enhancement vectors (layer {sim_layer})",
)
fig.axes[0].axhline(0.0, color="0.4", linestyle=":", linewidth=1)
nbtools.save_figure(fig, out, "gain_vs_cosine")
results_file = nbtools.write_results(records, out)


# %% [markdown]
# ## Conclusion (from this run's numbers)


# %%
def pearson(x, y):
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


r = pearson(pairs["cosine"].to_numpy(), pairs["gain"].to_numpy())
r_l = pearson(pairs["cosine_at_l_star"].to_numpy(), pairs["gain"].to_numpy())
if np.isnan(r):
    print(f"{len(pairs)} (source, target) pair(s): too few (or constant) for a correlation.")
else:
    trend = (
        "more similar sources transfer better"
        if r > 0.3
        else ("more similar sources transfer worse" if r < -0.3 else "no clear relation")
    )
    print(
        f"Pearson r between cosine (layer {sim_layer}) and CAST's gain over {len(pairs)} pairs: "
        f"{nbtools.fmt(r, 2)} ({trend}); at l*: {nbtools.fmt(r_l, 2)}."
    )
for row in pairs.itertuples():
    print(
        f"  {row.source} -> {row.target}: cosine {nbtools.fmt(row.cosine)}, gain "
        f"{nbtools.fmt(row.gain)} (CAST {nbtools.verdict(row.cast, row.zero_shot)} zero-shot)"
    )
