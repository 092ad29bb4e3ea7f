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
# # 01 Activation patterns of in-context learning
#
# **What the paper claims** (abstract): "Through an analysis of activation patterns in the
# latent space of LLMs, we observe that the enhanced activations induced by in-context
# examples have consistent patterns across different tasks." This observation motivates
# CAST.
#
# CAST_SPEC.md, analysis 1. For every task, n train examples x with k in-task
# demonstrations give the ICL enhancement `delta_l(x) = h_l(Pk(x; D)) - h_l(P0(x))`
# (block outputs at the last token) and `v_l = mean_x delta_l(x)`. We show:
# 1. the size of `v_l` per task and layer;
# 2. the cosine between tasks' `v_l` per layer, against a within-task split-half ceiling
#    (two halves of one task's deltas) and a random-direction floor (`E|cos|` of
#    independent Gaussian directions);
# 3. a 2-D PCA of the deltas coloured by task;
# 4. the matrix entropy per layer of zero-shot vs few-shot states (entropy of the
#    eigenvalues of the trace-normalised Gram matrix of the stacked, row-normalised
#    last-token states; `castlib.analysis.matrix_entropy`).
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/01_activation_patterns/`](../papermill_runs/results/full_cpu/01_activation_patterns/)
# (each run folder there holds the executed notebook `01_activation_patterns.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#01_activation_patterns`](../report/index.html#01_activation_patterns)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`): `tasks` = the cross-domain sources and targets (`sst2`, `ag_news`, `mnli`,
# `commonsense_qa`, `arc_easy`, `financial_phrasebank`, `arc_challenge`, `social_iqa`,
# `medmcqa`, `sciq`), `n_examples=64`, `k=4`.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = (
    "results/01_activation_patterns"  # tables, figures and results.json of this run (not committed)
)
tasks = ["sst2", "ag_news", "financial_phrasebank"]
n_examples = 8  # examples (deltas) per task
k = 1  # in-task demonstrations per few-shot prompt
seed = 0
heatmap_layers = None  # layers of the cosine heatmaps; None: L/4, L/2, 3L/4
pca_layers = None  # layers of the PCA plots; None: as heatmap_layers
n_splits = 20  # random splits of the split-half ceiling
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

from castlib import analysis
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "01_activation_patterns.ipynb")
nbtools.params_table(parameters)

# %% tags=["nbval-ignore-output"]
L = lm.n_layers
show_layers = heatmap_layers or sorted({L // 4, L // 2, (3 * L) // 4})
pca_show = pca_layers or show_layers
task_objs = nbtools.load_tasks(tasks, data_dir)
deltas, h_few, h_zero = {}, {}, {}
for name, task in tqdm(task_objs.items(), desc="recording"):
    deltas[name], h_few[name], h_zero[name] = nbtools.icl_deltas(
        lm, task, n_examples, k, seed=seed, batch_size=batch_size
    )

# %%
print(
    f"{L} layers, hidden size {lm.hidden_size}; deltas per task:",
    {name: d.shape[0] for name, d in deltas.items()},
)

# %% [markdown]
# ## 1. Per-task mean ICL enhancement per layer
# `rel_norm` = `||v_l|| / mean_x ||h_l(P0(x))||`: the shift relative to the size of the
# zero-shot state.

# %%
enh_rows = []
for name, d in deltas.items():
    v = d.mean(0)  # [L, hidden]
    zero_norm = h_zero[name].norm(dim=-1).mean(0)  # [L]
    for layer in range(L):
        enh_rows.append(
            {
                "task": name,
                "layer": layer,
                "v_norm": float(v[layer].norm()),
                "rel_norm": float(v[layer].norm() / zero_norm[layer]),
            }
        )
enhancement = pd.DataFrame(enh_rows)
nbtools.write_table(enhancement, out, "enhancement_norms")
enhancement.pivot(index="layer", columns="task", values="rel_norm").round(3)

# %%
fig = plots.lines(
    enhancement,
    x="layer",
    y="rel_norm",
    hue="task",
    title="ICL enhancement ||v_l|| / ||h_l(P0)||",
    ylabel="relative norm",
)
nbtools.save_figure(fig, out, "enhancement_norm_by_layer")

# %% [markdown]
# ## 2. Cross-task cosine per layer vs split-half ceiling and random floor
# `cross_task` is the mean off-diagonal cosine between tasks' `v_l`; `ceiling` the mean over
# tasks of the split-half cosine (two disjoint halves of one task's deltas); `floor` the
# expected |cos| of two random directions of this width.

# %%
floor_mean, floor_std = analysis.random_floor(lm.hidden_size, seed=seed)
cos_by_layer, layer_rows = {}, []
names = list(deltas)
for layer in range(L):
    cos = analysis.cosine_matrix({n: deltas[n][:, layer].mean(0) for n in names})
    cos_by_layer[layer] = cos
    off = cos.to_numpy()[~np.eye(len(names), dtype=bool)]
    ceilings = [analysis.split_half_ceiling(deltas[n][:, layer], n_splits, seed)[0] for n in names]
    layer_rows.append(
        {
            "layer": layer,
            "cross_task": float(off.mean()) if off.size else float("nan"),
            "cross_task_min": float(off.min()) if off.size else float("nan"),
            "ceiling": float(np.mean(ceilings)),
            "floor": floor_mean,
        }
    )
layers_table = pd.DataFrame(layer_rows)
layers_table.set_index("layer").round(3)

# %%
long = layers_table.melt(
    id_vars="layer",
    value_vars=["cross_task", "ceiling", "floor"],
    var_name="quantity",
    value_name="cosine",
)
fig = plots.lines(
    long, x="layer", y="cosine", hue="quantity", title="Cosine of enhancement vectors across tasks"
)
nbtools.save_figure(fig, out, "cross_task_cosine_by_layer")

# %%
fig = plots.heatmaps(
    {f"layer {layer}": cos_by_layer[layer].round(3) for layer in show_layers},
    title="Cosine between tasks' v_l",
)
nbtools.save_figure(fig, out, "cosine_heatmaps")
for layer in show_layers:
    nbtools.write_table(cos_by_layer[layer], out, f"cosine_layer{layer}")

# %% [markdown]
# ## 3. PCA of the deltas, coloured by task

# %%
pca_rows = []
for layer in pca_show:
    stacked = torch.cat([deltas[n][:, layer] for n in names])
    labels = [n for n in names for _ in range(deltas[n].shape[0])]
    scores = analysis.pca_2d(stacked)
    pca_rows += [
        {"layer": f"layer {layer}", "task": t, "pc1": float(a), "pc2": float(b)}
        for t, (a, b) in zip(labels, scores.tolist(), strict=True)
    ]
pca = pd.DataFrame(pca_rows)
nbtools.write_table(pca, out, "pca_deltas")
fig = plots.scatter(
    pca, x="pc1", y="pc2", hue="task", facet="layer", title="PCA of per-example ICL enhancements"
)
nbtools.save_figure(fig, out, "pca_deltas")

# %% [markdown]
# ## 4. Matrix entropy per layer: zero-shot vs few-shot
# States of all tasks stacked (rows L2-normalised); lower entropy = the states
# concentrate on fewer directions.

# %%
ent_rows = []
for layer in range(L):
    z0 = torch.cat([h_zero[n][:, layer] for n in names])
    zk = torch.cat([h_few[n][:, layer] for n in names])
    ent_rows.append(
        {
            "layer": layer,
            "zero_shot": analysis.matrix_entropy(z0),
            "few_shot": analysis.matrix_entropy(zk),
        }
    )
entropy = pd.DataFrame(ent_rows)
entropy.set_index("layer").round(3)

# %%
fig = plots.lines(
    entropy.melt(id_vars="layer", var_name="prompt", value_name="entropy"),
    x="layer",
    y="entropy",
    hue="prompt",
    title="Matrix entropy of last-token states",
    ylabel="entropy (nats)",
)
nbtools.save_figure(fig, out, "matrix_entropy_by_layer")

# %% [markdown]
# ## Outputs

# %%
records = []
for row in enhancement.itertuples():
    records.append(
        {
            "model": lm.name,
            "method": "icl_enhancement",
            "analysis": "norm",
            "target": row.task,
            "seed": seed,
            "layer": row.layer,
            "n": deltas[row.task].shape[0],
            "k": k,
            "v_norm": row.v_norm,
            "rel_norm": row.rel_norm,
        }
    )
for lrow, erow in zip(layers_table.itertuples(), entropy.itertuples(), strict=True):
    records.append(
        {
            "model": lm.name,
            "method": "icl_enhancement",
            "analysis": "layer",
            "target": "+".join(names),
            "seed": seed,
            "layer": lrow.layer,
            "k": k,
            "cross_task_cosine": lrow.cross_task,
            "ceiling": lrow.ceiling,
            "floor": lrow.floor,
            "entropy_zero_shot": erow.zero_shot,
            "entropy_few_shot": erow.few_shot,
        }
    )
nbtools.write_table(layers_table.merge(entropy, on="layer"), out, "layers")
results_file = nbtools.write_results(records, out)

# %% [markdown]
# ## Conclusion (from this run's numbers)

# %%
above = layers_table["cross_task"] > layers_table["floor"]
mid = layers_table.set_index("layer").loc[L // 2]
lower = (entropy["few_shot"] < entropy["zero_shot"]).sum()
print(
    f"Across {len(names)} tasks, the mean cross-task cosine of the ICL enhancement is above "
    f"the random floor ({nbtools.fmt(floor_mean)}) at {int(above.sum())} of {L} layers; at "
    f"layer {L // 2} it is {nbtools.fmt(mid['cross_task'])}, "
    f"{nbtools.fmt(100 * mid['cross_task'] / mid['ceiling'], 0)}% of the split-half "
    f"ceiling ({nbtools.fmt(mid['ceiling'])})."
)
print(
    f"The enhancement patterns are {'consistent' if above.mean() > 0.5 else 'not consistent'}"
    f" across tasks by this measure (cross-task cosine above the floor at most layers: "
    f"{'yes' if above.mean() > 0.5 else 'no'})."
)
print(
    f"Few-shot states have lower matrix entropy than zero-shot ones at {int(lower)} of {L} layers."
)
