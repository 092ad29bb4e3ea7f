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
# # 06 Sensitivity
#
# **What the paper claims** (abstract): cross-task ICL "faces critical challenges in terms
# of robustness"; CAST is proposed as a robust alternative. The abstract gives no
# hyper-parameter values; CAST_SPEC.md makes each an explicit parameter.
#
# CAST_SPEC.md, experiment 6: sensitivity to alpha, l*, k (demonstrations per contrastive
# prompt), m (selected samples), gamma (diversity weight), the graph's k and the diffusion
# steps T. A base CAST is fitted with the `source` protocol, over steered configurations only
# (`include_unsteered=False`: the sensitivity is around a steered (l*, alpha); alpha = 0 is in
# the alpha sweep); then
# - alpha and l* are swept with the base vector (no refit), one at a time, the other held
#   at its chosen value (alpha = 0 is zero-shot);
# - k, m, gamma, graph k and T are swept one at a time by refitting, with l* and alpha held
#   at the base run's values (so only the swept parameter changes).
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/06_sensitivity/`](../papermill_runs/results/full_cpu/06_sensitivity/)
# (each run folder there holds the executed notebook `06_sensitivity.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#06_sensitivity`](../report/index.html#06_sensitivity)
# (build it with `make report`).

# %% [markdown]
# ## Parameters
# **Full size** (`papermill_runs/full_cpu.yaml`): `seeds=[0]` (`gpu.yaml`: `[0, 1, 2]`),
# `n_test=500`, `m=32`, `k=4`, `n_candidates=256`, `n_queries=64`, `n_tune=32`,
# `layers=None`, `alphas=None`, `alpha_grid=[0, 0.25, 0.5, 1, 2, 4, 8]`,
# `layer_grid=None` (every layer), `refit_grid={"k": [1, 2, 8], "m": [8, 16, 64, 128],
# "gamma": [0, 0.00390625, 0.015625, 0.03125], "graph_k": [5, 20, 40], "diffusion_steps": [1, 3, 4]}`.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = (
    "results/06_sensitivity"  # tables, figures and results.json of this run (not committed)
)
sources = ["sst2"]
target = "financial_phrasebank"
seeds = [0]
n_test = 16
m = 4
k = 1
gamma = 0.0078125  # castlib.selection.DEFAULT_GAMMA: the spec's 0.5 over 64 queries
graph_k = 10
diffusion_steps = 2
n_candidates = 8
n_queries = 4
n_tune = 2
layers = [6, 9]  # candidate l* of the base fit; None: the method's default grid
alphas = [0.5, 1.0]  # candidate alpha of the base fit; None: the method's default
alpha_grid = [0.0]  # alphas evaluated at the chosen l* (no refit); 0 is zero-shot
layer_grid = [12]  # layers evaluated at the chosen alpha (no refit); None: every layer
refit_grid = {"m": [2], "gamma": [0.0]}  # refitted; full: k, m, gamma, graph_k, diffusion_steps
batch_size = 16

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before the first import of tqdm.auto (by castlib), which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import pandas as pd
from tqdm.auto import tqdm

import castlib
from castlib.repro import nbtools, plots

lm, out = nbtools.setup(model, device=device, dtype=dtype, output_dir=output_dir)
print(lm)

# %%
parameters = nbtools.notebook_parameters(globals(), "06_sensitivity.ipynb")
nbtools.params_table(parameters)

# %% tags=["nbval-ignore-output"]
tgt = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
base_params = dict(
    m=m,
    k=k,
    gamma=gamma,
    graph_k=graph_k,
    diffusion_steps=diffusion_steps,
    n_candidates=n_candidates,
    n_queries=n_queries,
    n_tune=n_tune,
    include_unsteered=False,  # (l*, alpha) of the base: the best steered configuration
    batch_size=batch_size,
    data_dir=data_dir,
)
if layers is not None:
    base_params["layers"] = layers
if alphas is not None:
    base_params["alphas"] = alphas
sweep_layers = layer_grid if layer_grid is not None else list(range(lm.n_layers))
records = []
for seed in tqdm(seeds, desc="seeds"):
    base = castlib.methods.get("cast")(**base_params).fit(lm, sources, tgt, seed=seed)
    rec = base.evaluate(lm, tgt)
    l_star, a_star = base.info["layer"], base.info["alpha"]
    point = {"seed": seed, "l_star": l_star, "alpha_star": a_star}
    for param, value in [("alpha", a_star), ("layer", l_star)] + [
        (p, base_params[p]) for p in refit_grid
    ]:
        records.append(
            {**point, "param": param, "value": value, "is_base": True, "accuracy": rec["accuracy"]}
        )
    # alpha and l* with the base vector: every point scored in one sweep (each test prompt's
    # prefix runs once, then one token per point; castlib.evaluate_sweep)
    points = [("alpha", a, l_star, a) for a in alpha_grid if a != a_star]
    points += [("layer", la, la, a_star) for la in sweep_layers if la != l_star]
    swept = castlib.evaluate_sweep(
        lm,
        tgt,
        [(lambda la=la, a=a, b=base: b.steering(lm, la, a)) for _, _, la, a in points],
        batch_size=batch_size,
    )
    for (param, value, _, _), res in zip(points, swept, strict=True):
        records.append(
            {**point, "param": param, "value": value, "is_base": False, "accuracy": res.accuracy}
        )
    refits = [(p, v) for p, grid in refit_grid.items() for v in grid if v != base_params[p]]
    refitted = []
    for param, value in tqdm(refits, desc="refits", leave=False):
        params = {
            **base_params,
            param: value,
            "layers": [l_star],
            "alphas": [a_star],
            "n_tune": 1,
        }  # (l*, alpha) held: the tuning step is a no-op
        params["n_candidates"] = max(params["n_candidates"], params["m"])
        refitted.append(castlib.methods.get("cast")(**params).fit(lm, sources, tgt, seed=seed))
    # the refitted vectors scored together: one prefix pass per test prompt, then one token
    # per vector (castlib.methods.evaluate_methods)
    for (param, value), rec in zip(
        refits, castlib.methods.evaluate_methods(lm, refitted, tgt), strict=True
    ):
        records.append(
            {**point, "param": param, "value": value, "is_base": False, "accuracy": rec["accuracy"]}
        )
results = pd.DataFrame(records)
results.insert(0, "model", lm.name)
results.insert(1, "method", "cast")
results.insert(2, "target", target)

# %% [markdown]
# ## Accuracy per parameter value (mean over seeds; `is_base`: the base run's value)

# %%
table = (
    results.groupby(["param", "value"], sort=False)
    .agg(accuracy=("accuracy", "mean"), is_base=("is_base", "any"))
    .reset_index()
    .sort_values(["param", "value"], kind="stable")
)
nbtools.write_table(table, out, "sensitivity")
table.assign(value=table["value"].map(lambda v: f"{v:g}")).round(3).reset_index(drop=True)

# %%
zero = results[(results.param == "alpha") & (results.value == 0)]["accuracy"]
fig = plots.facet_lines(
    results.astype({"value": float}),
    x="value",
    y="accuracy",
    col="param",
    reference=float(zero.mean()) if len(zero) else None,
    title=f"CAST sensitivity on {target} (dotted: alpha = 0, zero-shot)",
)
nbtools.save_figure(fig, out, "sensitivity")
results_file = nbtools.write_results(results.to_dict("records"), out)

# %% [markdown]
# ## Conclusion (from this run's numbers)

# %%
spread = table.groupby("param", sort=False)["accuracy"].agg(lambda s: s.max() - s.min())
for param, group in table.groupby("param", sort=False):
    best = group.loc[group["accuracy"].idxmax()]
    base_acc = group.loc[group["is_base"], "accuracy"].iloc[0]
    print(
        f"{param}: accuracy spans {nbtools.fmt(spread[param])} over {len(group)} value(s); "
        f"best {best['value']:g} ({nbtools.fmt(best['accuracy'])}), base "
        f"{nbtools.fmt(base_acc)}."
    )
swept = spread[table.groupby("param", sort=False).size() > 1]
if len(swept):
    most = ", ".join(swept.index[swept == swept.max()])
    least = ", ".join(swept.index[swept == swept.min()])
    print(
        f"Most sensitive to {most} (span {nbtools.fmt(swept.max())}), least to "
        f"{least} (span {nbtools.fmt(swept.min())})."
    )
