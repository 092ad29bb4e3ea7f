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
# # 00 Quickstart: CAST on one source -> target pair
#
# **What the paper claims** (Tang et al., 2025, arXiv:2507.13236, abstract): cross-task
# transfer can be achieved by *latent space steering without parameter updates or input
# expansion*. CAST "first selects influential and diverse samples from high-resource tasks,
# then utilizes their contrastive representation-enhanced activations to adapt LLMs to
# low-resource tasks".
#
# This notebook runs the method protocol of `castlib.methods` once: zero-shot and CAST on
# a low-resource target, CAST's vector made from a high-resource source task
# (CAST_SPEC.md, "The method"). The steering layer l* and scale alpha are chosen on held-out
# *source* examples (protocol `source`), never on the target's test split.
#
# **The outputs committed with this notebook are a CI-sized smoke run** (the small defaults
# of the `parameters` cell), executed so that the notebook stays tested: their numbers are
# not meaningful. The full-size run (`papermill_runs/full_cpu.yaml`) is archived under
# [`papermill_runs/results/full_cpu/00_quickstart/`](../papermill_runs/results/full_cpu/00_quickstart/)
# (each run folder there holds the executed notebook `00_quickstart.ipynb` and its records; the
# archive's [README](../papermill_runs/results/README.md) lists which runs are present),
# and it is shown on the report page [`report/index.html#00_quickstart`](../report/index.html#00_quickstart)
# (build it with `make report`). The last section of this notebook draws the full-size main
# table (notebook 02, every method on five targets) from the archive.

# %% [markdown]
# ## Parameters
# CI-sized defaults (seconds of model time). **Full size** (`papermill_runs/full_cpu.yaml`):
# `n_test=500`,
# `m=32`, `k=4`, `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None` (five
# layers over the middle half), `alphas=None` (the method's default grid: 0.25, 0.5, 1, 2 at each
# layer, plus alpha = 0, the unsteered model, kept when steering does not help).

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
dtype = "auto"  # "auto" (bf16 on CUDA if supported, else float32), "float32" or "bfloat16"
data_dir = None  # None: $CASTLIB_DATA, else the data/ folder the repository ships
output_dir = "results/00_quickstart"  # tables, figures and results.json of this run (not committed)
sources = ["sst2"]  # high-resource source task(s)
target = "financial_phrasebank"  # low-resource target task
seed = 0
n_test = 16  # test examples (a seeded sample); None: the whole test split
m = 4  # selected source samples
k = 1  # demonstrations per few-shot prompt
n_candidates = 8  # source candidates per source task
n_queries = 4  # unlabelled target inputs guiding the selection
n_tune = 2  # held-out source examples for choosing (l*, alpha)
layers = [6, 9]  # candidate l*; None: the method's default grid
alphas = [0.5, 1.0]  # candidate alpha
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
parameters = nbtools.notebook_parameters(globals(), "00_quickstart.ipynb")
nbtools.params_table(parameters)

# %% [markdown]
# ## Data
# The target's test examples are a seeded sample (the same for every method).

# %%
target_task = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
print(target_task)
print("\nA zero-shot prompt P0(x):\n" + castlib.zero_shot(target_task, target_task.test[0]))

# %% [markdown]
# ## Zero-shot, then CAST

# %% tags=["nbval-ignore-output"]
zero = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
zero.fit(lm, sources, target_task, seed=seed)
cast = castlib.methods.get("cast")(
    m=m,
    k=k,
    n_candidates=n_candidates,
    n_queries=n_queries,
    n_tune=n_tune,
    layers=layers,
    alphas=alphas,
    batch_size=batch_size,
    data_dir=data_dir,
)
cast.fit(lm, sources, target_task, seed=seed)
records = [
    nbtools.flat_record(method.evaluate(lm, target_task, progress=True))
    for method in tqdm([zero, cast], desc="evaluating")
]

# %%
results = pd.DataFrame(records)
columns = [
    "method",
    "target",
    "n",
    "accuracy",
    "macro_f1",
    "layer",
    "alpha",
    "prompt_tokens_per_query",
]
results[columns].round(3)

# %% [markdown]
# How (l*, alpha) was chosen: accuracy and mean gold log-probability on the held-out source examples, steered zero-shot.

# %%
tuning = pd.DataFrame(cast.info["tuning_grid"]).round(3)
nbtools.write_table(tuning, out, "tuning_grid")
tuning

# %%
print(f"selected {len(cast.info['selected_ids'])} source samples, e.g.:")
pd.Series(cast.info["selected_ids"][:5], name="selected_ids")

# %% [markdown]
# Cost of this run (wall time and memory vary between machines; not compared).

# %% tags=["nbval-ignore-output"]
results[["method", "fit_seconds", "eval_seconds", "peak_memory_mb"]].round(2)

# %% [markdown]
# ## Outputs: results.json, CSV, figure, and the fitted method (reloadable)

# %%
nbtools.write_results(records, out)
cast.save(out / "cast_method")  # castlib.methods.load(folder).evaluate(lm, target)
fig = plots.bar(results, x="method", y="accuracy", title=f"{target}: accuracy (n={n_test})")
nbtools.save_figure(fig, out, "accuracy_by_method")

# %% [markdown]
# ## Conclusion (from this run's numbers)

# %%
by = results.set_index("method")
acc, tokens = by["accuracy"], by["prompt_tokens_per_query"]
print(
    f"CAST {nbtools.verdict(acc['cast'], acc['zero_shot'])} zero-shot on {target} "
    f"({nbtools.fmt(acc['cast'])} vs {nbtools.fmt(acc['zero_shot'])}, "
    f"n={int(by.loc['cast', 'n'])}), steering layer {cast.info['layer']} with "
    f"alpha={cast.info['alpha']} (chosen on source examples, no target labels)."
)
print(
    f"Prompt tokens per query: CAST {nbtools.fmt(tokens['cast'], 1)}, zero-shot "
    f"{nbtools.fmt(tokens['zero_shot'], 1)} "
    f"({'no' if tokens['cast'] == tokens['zero_shot'] else 'some'} input expansion)."
)

# %% [markdown]
# ## The full-size results, from the archive
# The numbers above come from this notebook's CI-sized defaults. What a full-size batch
# measured is kept in the repository under `papermill_runs/results/<config>/`. This reads the
# newest archive that holds all of its config's notebook-02 runs (it prints which): the
# 500-row `full_cpu.yaml` batch, whose 15 runs (five targets x three seeds) are archived; in a
# copy without them it falls back to `full_cpu_200rows/` (the earlier 200-row version, made by
# older method code; see the archive's README). This is its main
# table (notebook 02: every method on five cross-domain targets, mean
# and standard deviation over seeds), read from the archive's `summary.csv`, not computed here.

# %%
from pathlib import Path

ARCHIVES = ("full_cpu", "full_cpu_200rows")  # newest first


def find_archive(notebook: str = "02_cross_domain", file: str = "summary.csv") -> Path:
    """``papermill_runs/results/<config>/<file>`` of the first archive in `ARCHIVES` that holds
    every run of ``notebook`` its config expands to (`castlib.repro.report.load_archive`), looked up
    from the working directory upwards, then from the castlib package's parent (the repository
    of an editable install)."""
    from castlib.repro.report import load_archive

    here = Path.cwd().resolve()
    for config in ARCHIVES:
        name = f"papermill_runs/results/{config}/{file}"
        for folder in [here, *here.parents, Path(castlib.__file__).resolve().parents[1]]:
            path = folder / name
            if not path.is_file():
                continue
            held = load_archive(path.parent, folder)
            ours = [r for r in held.run_dirs if r.split("/")[0] == notebook]
            if ours and not any(r.split("/")[0] == notebook for r in held.missing):
                return path
    raise FileNotFoundError(
        f"no papermill_runs/results/{{{','.join(ARCHIVES)}}}/{file} with all {notebook} runs "
        f"above {here.name}/ or beside the castlib package: run this notebook from a clone of "
        "the castlib repository (the archive ships with it)"
    )


found = find_archive()
print(f"archive: {found.parent.name}")
archive = pd.read_csv(found)
main = archive[archive["notebook"].str.contains("02_cross_domain")]
n_seeds, n_rows = main["seed"].nunique(), int(main["n"].max())
fig = plots.bar(
    main,
    x="target",
    y="accuracy",
    hue="method",
    title=f"Archived full-size run: accuracy (n={n_rows} per target, mean and sd over {n_seeds} seeds)",
)
nbtools.mean_std(main, ["target", "method"])["mean"].unstack("target").round(3)
