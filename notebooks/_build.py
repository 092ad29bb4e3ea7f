"""Generate the reproduction notebooks (``notebooks/0*_*.ipynb``) from one source of truth.

    python notebooks/_build.py                 # (re)write every notebook, without outputs
    python notebooks/_build.py --execute       # ... then execute them in place (outputs kept)
    python notebooks/_build.py --execute 02    # only notebooks whose name contains "02"

Every notebook follows one layout, so the notebooks stay consistent:

1. a markdown cell: the section of CAST_SPEC.md it reproduces and what the paper claims there
   (from the abstract; the paper's body and numbers are not available, none are invented);
2. exactly one code cell tagged ``parameters`` with CI-sized defaults (the embedded model, a few
   test examples) and a markdown line giving the full-size setting (papermill_runs/full_cpu.yaml);
3. a setup cell (imports, model loading) and the computations with progress bars, tagged
   ``nbval-ignore-output`` (progress bars, loading messages and timings are not compared);
4. tables (pandas) and seaborn figures (PNG in ``output_dir``) in compared cells, rounded;
5. ``results.json`` (flat records for `castlib.runs`) and CSVs in ``output_dir``;
6. a conclusion printed from this run's numbers.

Executing uses the notebook's own folder as the working directory (as nbval and papermill do).
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
IGNORE = "nbval-ignore-output"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, *tags: str) -> nbformat.NotebookNode:
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


COMMON_PARAMS = """\
model = "gemma-3-270m"  # the embedded Gemma 3 270M, or any Hugging Face causal LM id or path
device = "auto"  # "auto" (CUDA when present), "cpu", "cuda"
data_dir = None  # None: $CASTLIB_DATA, ./data, ../shared/data, then shared/data beside the repo
output_dir = "results/{name}"  # tables, figures and results.json of this run (not committed)
"""

SETUP = """\
import warnings

from tqdm import TqdmWarning

warnings.filterwarnings("ignore", category=TqdmWarning)  # text bars when ipywidgets is missing

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import castlib
from castlib import analysis, nbtools, plots
from castlib.methods.base import measure

plots.set_theme()
pd.set_option("display.precision", 3)
pd.set_option("display.width", 120)
out = nbtools.output_path(output_dir)
lm = castlib.load_model(model, device=device)
print(lm)
"""


def cat(*parts: str) -> str:
    """Join separately indented source snippets."""
    return "\n".join(textwrap.dedent(p).strip("\n") for p in parts)


def params_cell(name: str, *body: str) -> nbformat.NotebookNode:
    return code(cat(COMMON_PARAMS.format(name=name), *body), "parameters")


def echo_cell(params: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Show the run's parameters (paths hidden), generated from the parameters cell."""
    names = []
    for node in ast.parse(params.source).body:
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    items = ", ".join(f"{n}={n}" for n in names)
    return code(f"nbtools.params_table(dict({items}))")


def notebook(name: str, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: exactly one parameters cell"
    i = cells.index(params[0])
    cells = cells[: i + 1] + [code(SETUP, IGNORE), echo_cell(params[0])] + cells[i + 1 :]
    for j, cell in enumerate(cells):
        cell.id = f"{name[:2]}-{j:02d}"  # stable ids: rebuilding does not churn the files
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {}

# --------------------------------------------------------------------------- 00 quickstart

NOTEBOOKS["00_quickstart"] = [
    md(
        """
        # 00 Quickstart: CAST on one source -> target pair

        **What the paper claims** (Tang et al., 2025, arXiv:2507.13236, abstract): cross-task
        transfer can be achieved by *latent space steering without parameter updates or input
        expansion*. CAST "first selects influential and diverse samples from high-resource tasks,
        then utilizes their contrastive representation-enhanced activations to adapt LLMs to
        low-resource tasks".

        This notebook runs the method protocol of `castlib.methods` once: zero-shot and CAST on
        a low-resource target, CAST's vector made from a high-resource source task
        (CAST_SPEC.md, "The method"). The steering layer l* and scale alpha are chosen on held-out
        *source* examples (protocol `source`), never on the target's test split.
        """
    ),
    md(
        """
        ## Parameters
        CI-sized defaults (seconds of model time). **Full size** (`papermill_runs/full_cpu.yaml`):
        `n_test=200`,
        `m=32`, `k=4`, `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None` (five
        layers over the middle half), `alphas=[0.25, 0.5, 1.0, 2.0]` (the method's defaults).
        """
    ),
    params_cell(
        "00_quickstart",
        """
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
        """,
    ),
    md("## Data\nThe target's test examples are a seeded sample (the same for every method)."),
    code(
        """
        target_task = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
        print(target_task)
        print("\\nA zero-shot prompt P0(x):\\n" + castlib.zero_shot(target_task, target_task.test[0]))
        """
    ),
    md("## Zero-shot, then CAST"),
    code(
        """
        zero = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
        zero.fit(lm, sources, target_task, seed=seed)
        cast = castlib.methods.get("cast")(
            m=m, k=k, n_candidates=n_candidates, n_queries=n_queries, n_tune=n_tune,
            layers=layers, alphas=alphas, batch_size=batch_size, data_dir=data_dir,
        )
        cast.fit(lm, sources, target_task, seed=seed)
        records = [
            nbtools.flat_record(method.evaluate(lm, target_task, progress=True))
            for method in tqdm([zero, cast], desc="evaluating")
        ]
        """,
        IGNORE,
    ),
    code(
        """
        results = pd.DataFrame(records)
        columns = ["method", "target", "n", "accuracy", "macro_f1", "layer", "alpha",
                   "prompt_tokens_per_query"]
        results[columns].round(3)
        """
    ),
    md(
        "How (l*, alpha) was chosen: accuracy and mean gold log-probability on the held-out "
        "source examples, steered zero-shot."
    ),
    code(
        """
        tuning = pd.DataFrame(cast.info["tuning_grid"]).round(3)
        nbtools.write_table(tuning, out, "tuning_grid")
        tuning
        """
    ),
    code(
        """
        print(f"selected {len(cast.info['selected_ids'])} source samples, e.g.:")
        pd.Series(cast.info["selected_ids"][:5], name="selected_ids")
        """
    ),
    md("Cost of this run (wall time and memory vary between machines; not compared)."),
    code(
        """
        results[["method", "fit_seconds", "eval_seconds", "peak_memory_mb"]].round(2)
        """,
        IGNORE,
    ),
    md("## Outputs: results.json, CSV, figure, and the fitted method (reloadable)"),
    code(
        """
        nbtools.write_results(records, out)
        cast.save(out / "cast_method")  # castlib.methods.load(folder).evaluate(lm, target)
        fig = plots.bar(results, x="method", y="accuracy", title=f"{target}: accuracy (n={n_test})")
        nbtools.save_figure(fig, out, "accuracy_by_method")
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
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
        """
    ),
]

# --------------------------------------------------------------------------- 01 activation patterns

NOTEBOOKS["01_activation_patterns"] = [
    md(
        """
        # 01 Activation patterns of in-context learning

        **What the paper claims** (abstract): "Through an analysis of activation patterns in the
        latent space of LLMs, we observe that the enhanced activations induced by in-context
        examples have consistent patterns across different tasks." This observation motivates
        CAST.

        CAST_SPEC.md, analysis 1. For every task, n train examples x with k in-task
        demonstrations give the ICL enhancement `delta_l(x) = h_l(Pk(x; D)) - h_l(P0(x))`
        (block outputs at the last token) and `v_l = mean_x delta_l(x)`. We show:
        1. the size of `v_l` per task and layer;
        2. the cosine between tasks' `v_l` per layer, against a within-task split-half ceiling
           (two halves of one task's deltas) and a random-direction floor (`E|cos|` of
           independent Gaussian directions);
        3. a 2-D PCA of the deltas coloured by task;
        4. the matrix entropy per layer of zero-shot vs few-shot states (entropy of the
           eigenvalues of the trace-normalised Gram matrix of the stacked, row-normalised
           last-token states; `castlib.analysis.matrix_entropy`).
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`): `tasks` = the cross-domain sources and targets (`sst2`, `ag_news`, `mnli`,
        `commonsense_qa`, `arc_easy`, `financial_phrasebank`, `arc_challenge`, `social_iqa`,
        `medmcqa`, `sciq`), `n_examples=64`, `k=4`.
        """
    ),
    params_cell(
        "01_activation_patterns",
        """
        tasks = ["sst2", "ag_news", "financial_phrasebank"]
        n_examples = 8  # examples (deltas) per task
        k = 1  # in-task demonstrations per few-shot prompt
        seed = 0
        heatmap_layers = None  # layers of the cosine heatmaps; None: L/4, L/2, 3L/4
        pca_layers = None  # layers of the PCA plots; None: as heatmap_layers
        n_splits = 20  # random splits of the split-half ceiling
        batch_size = 16
        """,
    ),
    code(
        """
        L = lm.n_layers
        show_layers = heatmap_layers or sorted({L // 4, L // 2, (3 * L) // 4})
        pca_show = pca_layers or show_layers
        task_objs = nbtools.load_tasks(tasks, data_dir)
        deltas, h_few, h_zero = {}, {}, {}
        for name, task in tqdm(task_objs.items(), desc="recording"):
            deltas[name], h_few[name], h_zero[name] = nbtools.icl_deltas(
                lm, task, n_examples, k, seed=seed, batch_size=batch_size
            )
        """,
        IGNORE,
    ),
    code(
        """
        print(f"{L} layers, hidden size {lm.hidden_size}; deltas per task:",
              {name: d.shape[0] for name, d in deltas.items()})
        """
    ),
    md(
        """
        ## 1. Per-task mean ICL enhancement per layer
        `rel_norm` = `||v_l|| / mean_x ||h_l(P0(x))||`: the shift relative to the size of the
        zero-shot state.
        """
    ),
    code(
        """
        enh_rows = []
        for name, d in deltas.items():
            v = d.mean(0)  # [L, hidden]
            zero_norm = h_zero[name].norm(dim=-1).mean(0)  # [L]
            for layer in range(L):
                enh_rows.append({
                    "task": name, "layer": layer,
                    "v_norm": float(v[layer].norm()),
                    "rel_norm": float(v[layer].norm() / zero_norm[layer]),
                })
        enhancement = pd.DataFrame(enh_rows)
        nbtools.write_table(enhancement, out, "enhancement_norms")
        enhancement.pivot(index="layer", columns="task", values="rel_norm").round(3)
        """
    ),
    code(
        """
        fig = plots.lines(enhancement, x="layer", y="rel_norm", hue="task",
                          title="ICL enhancement ||v_l|| / ||h_l(P0)||", ylabel="relative norm")
        nbtools.save_figure(fig, out, "enhancement_norm_by_layer")
        """
    ),
    md(
        """
        ## 2. Cross-task cosine per layer vs split-half ceiling and random floor
        `cross_task` is the mean off-diagonal cosine between tasks' `v_l`; `ceiling` the mean over
        tasks of the split-half cosine (two disjoint halves of one task's deltas); `floor` the
        expected |cos| of two random directions of this width.
        """
    ),
    code(
        """
        floor_mean, floor_std = analysis.random_floor(lm.hidden_size, seed=seed)
        cos_by_layer, layer_rows = {}, []
        names = list(deltas)
        for layer in range(L):
            cos = analysis.cosine_matrix({n: deltas[n][:, layer].mean(0) for n in names})
            cos_by_layer[layer] = cos
            off = cos.to_numpy()[~np.eye(len(names), dtype=bool)]
            ceilings = [analysis.split_half_ceiling(deltas[n][:, layer], n_splits, seed)[0]
                        for n in names]
            layer_rows.append({
                "layer": layer,
                "cross_task": float(off.mean()) if off.size else float("nan"),
                "cross_task_min": float(off.min()) if off.size else float("nan"),
                "ceiling": float(np.mean(ceilings)),
                "floor": floor_mean,
            })
        layers_table = pd.DataFrame(layer_rows)
        layers_table.set_index("layer").round(3)
        """
    ),
    code(
        """
        long = layers_table.melt(id_vars="layer", value_vars=["cross_task", "ceiling", "floor"],
                                 var_name="quantity", value_name="cosine")
        fig = plots.lines(long, x="layer", y="cosine", hue="quantity",
                          title="Cosine of enhancement vectors across tasks")
        nbtools.save_figure(fig, out, "cross_task_cosine_by_layer")
        """
    ),
    code(
        """
        fig = plots.heatmaps({f"layer {l}": cos_by_layer[l].round(3) for l in show_layers},
                             title="Cosine between tasks' v_l")
        nbtools.save_figure(fig, out, "cosine_heatmaps")
        for layer in show_layers:
            nbtools.write_table(cos_by_layer[layer], out, f"cosine_layer{layer}")
        """
    ),
    md("## 3. PCA of the deltas, coloured by task"),
    code(
        """
        pca_rows = []
        for layer in pca_show:
            stacked = torch.cat([deltas[n][:, layer] for n in names])
            labels = [n for n in names for _ in range(deltas[n].shape[0])]
            scores = analysis.pca_2d(stacked)
            pca_rows += [{"layer": f"layer {layer}", "task": t, "pc1": float(a), "pc2": float(b)}
                         for t, (a, b) in zip(labels, scores.tolist())]
        pca = pd.DataFrame(pca_rows)
        nbtools.write_table(pca, out, "pca_deltas")
        fig = plots.scatter(pca, x="pc1", y="pc2", hue="task", facet="layer",
                            title="PCA of per-example ICL enhancements")
        nbtools.save_figure(fig, out, "pca_deltas")
        """
    ),
    md(
        """
        ## 4. Matrix entropy per layer: zero-shot vs few-shot
        States of all tasks stacked (rows L2-normalised); lower entropy = the states
        concentrate on fewer directions.
        """
    ),
    code(
        """
        ent_rows = []
        for layer in range(L):
            z0 = torch.cat([h_zero[n][:, layer] for n in names])
            zk = torch.cat([h_few[n][:, layer] for n in names])
            ent_rows.append({"layer": layer,
                             "zero_shot": analysis.matrix_entropy(z0),
                             "few_shot": analysis.matrix_entropy(zk)})
        entropy = pd.DataFrame(ent_rows)
        entropy.set_index("layer").round(3)
        """
    ),
    code(
        """
        fig = plots.lines(entropy.melt(id_vars="layer", var_name="prompt", value_name="entropy"),
                          x="layer", y="entropy", hue="prompt",
                          title="Matrix entropy of last-token states", ylabel="entropy (nats)")
        nbtools.save_figure(fig, out, "matrix_entropy_by_layer")
        """
    ),
    md("## Outputs"),
    code(
        """
        records = []
        for row in enhancement.itertuples():
            records.append({"model": lm.name, "method": "icl_enhancement", "analysis": "norm",
                            "target": row.task, "seed": seed, "layer": row.layer,
                            "n": deltas[row.task].shape[0], "k": k,
                            "v_norm": row.v_norm, "rel_norm": row.rel_norm})
        for lrow, erow in zip(layers_table.itertuples(), entropy.itertuples()):
            records.append({"model": lm.name, "method": "icl_enhancement", "analysis": "layer",
                            "target": "+".join(names), "seed": seed, "layer": lrow.layer, "k": k,
                            "cross_task_cosine": lrow.cross_task, "ceiling": lrow.ceiling,
                            "floor": lrow.floor, "entropy_zero_shot": erow.zero_shot,
                            "entropy_few_shot": erow.few_shot})
        nbtools.write_table(layers_table.merge(entropy, on="layer"), out, "layers")
        results_file = nbtools.write_results(records, out)
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
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
        print(f"Few-shot states have lower matrix entropy than zero-shot ones at {int(lower)} of "
              f"{L} layers.")
        """
    ),
]

# --------------------------------------------------------------------------- 02 cross-domain

METHOD_PARAMS_BODY = """
k = 1  # demonstrations per prompt (few-shot, cross-task ICL, task/function vector, ICV, CAST)
m = 4  # CAST (and LoRA/KaSA on its selection): selected source samples
n_candidates = 8  # CAST and similar-demo ICL: candidates per source task
n_queries = 4  # CAST: unlabelled target inputs
n_tune = 2  # steering methods: examples for choosing (l*, alpha)
layers = [6, 9]  # steering methods: candidate l*; None: the method's default grid
cast_alphas = [0.5, 1.0]  # CAST: candidate alpha; None: the method's default
icv_alphas = [0.05, 0.1]  # ICV: candidate alpha; None: the method's default
n_prompts = 4  # task vector, function vector: source few-shot prompts averaged
n_samples = 4  # ICV: source samples
top_heads = [2]  # function vector: candidate K (heads summed); None: the method's default
n_corrupted = 2  # function vector: corrupted prompts for the heads' indirect effects
n_demos = 4  # I2CL: source demonstrations whose context vectors are averaged
n_calib = 4  # I2CL: source examples calibrating the injection coefficients
train_steps = 4  # I2CL, LoRA, KaSA: optimiser steps; None: each method's default
n_target = 8  # LoRA/KaSA on target_dev: labelled target examples, at most 32
method_params = {}  # extra parameters per method label, e.g. {"cast": {"gamma": 0.0}}
batch_size = 16
"""

METHOD_SETUP = """
shared = dict(k=k, m=m, n_candidates=n_candidates, n_queries=n_queries, n_tune=n_tune,
              layers=layers, n_prompts=n_prompts, n_samples=n_samples, top_heads=top_heads,
              n_corrupted=n_corrupted, n_demos=n_demos, n_calib=n_calib, steps=train_steps,
              n_target=n_target, batch_size=batch_size)
shared = {name: value for name, value in shared.items() if value is not None}  # None: default
overrides = {"cast": {} if cast_alphas is None else {"alphas": cast_alphas},
             "icv": {} if icv_alphas is None else {"alphas": icv_alphas}}
for label, extra in method_params.items():
    overrides[label] = {**overrides.get(label, {}), **extra}
"""

NOTEBOOKS["02_cross_domain"] = [
    md(
        """
        # 02 Cross-domain transfer

        **What the paper claims** (abstract): "Extensive experiments across both cross-domain and
        cross-lingual transfer settings show that our method outperforms competitive baselines".

        CAST_SPEC.md, experiment 2: every method on every target task, mean and std over seeds.
        Methods (labels): `zero_shot`; `cross_task_icl_random` and `cross_task_icl_similar`
        (Chatterjee et al. 2024); `task_vector` (Hendel et al. 2023); `icv` (Liu et al. 2024);
        `function_vector` (Todd et al. 2024); `i2cl` (Li et al. 2025); `lora_source` and
        `kasa_source` (parameter-updating: LoRA, Hu et al. 2022, and KaSA, Wang et al. 2025,
        trained on the m source samples CAST selects); `cast`. References that read gold labels
        of the *target* (not label-free competitors): `few_shot` (k target demonstrations),
        `lora_target_dev` and `kasa_target_dev` (trained on <= 32 labelled target examples).
        `methods="all"` runs every method registered in `castlib.methods`. All methods see the
        same seeded sample of test examples; sources are pooled.
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`, one run per target): `targets` =
        `arc_challenge`, `financial_phrasebank`, `medmcqa`, `sciq`, `social_iqa`; `sources` =
        `sst2`, `ag_news`, `commonsense_qa` (`gpu.yaml`: the eight sources of Chatterjee et al.
        available here, and `methods="all"`); `seeds=[0, 1, 2]`, `n_test=200`, `k=4`, `m=32`,
        `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`, `cast_alphas=None`,
        `icv_alphas=None`, `n_prompts=16`, `n_samples=32`, `top_heads=None`, `n_corrupted=8`,
        `n_demos=16`, `n_calib=32`, `train_steps=None`, `n_target=32`.
        """
    ),
    params_cell(
        "02_cross_domain",
        """
        targets = ["financial_phrasebank"]  # low-resource targets
        sources = ["sst2"]  # high-resource sources (pooled)
        methods = ["zero_shot", "few_shot", "cross_task_icl_random", "cross_task_icl_similar",
                   "task_vector", "icv", "function_vector", "i2cl", "lora_source",
                   "lora_target_dev", "kasa_source", "kasa_target_dev",
                   "cast"]  # or "all": every registered method
        seeds = [0]
        n_test = 16  # test examples per target (a seeded sample); None: all
        """,
        METHOD_PARAMS_BODY,
    ),
    code(
        cat(
            METHOD_SETUP,
            """
        labels = nbtools.expand_methods(methods)
        target_tasks = {t: nbtools.sample_test(castlib.load_task(t, data_dir), n_test)
                        for t in targets}
        print("methods:", labels)
        print({t: len(task.test) for t, task in target_tasks.items()})
        """,
        )
    ),
    code(
        """
        records, tuning = [], []
        jobs = [(t, s, lab) for t in targets for s in seeds for lab in labels]
        for target, seed, label in tqdm(jobs, desc="cross-domain"):
            tgt = target_tasks[target]
            method = nbtools.build_method(label, shared, overrides, data_dir)
            method.fit(lm, sources, tgt, seed=seed)
            rec = method.evaluate(lm, tgt)
            records.append(nbtools.flat_record(rec, method=label, registry_method=rec["method"]))
            tuning += [{"target": target, "seed": seed, "method": label, **g}
                       for g in rec.get("tuning_grid", [])]
        results = pd.DataFrame(records)
        """,
        IGNORE,
    ),
    md("## Accuracy per target and method (mean and std over seeds)"),
    code(
        """
        summary = nbtools.mean_std(results, ["target", "method"])
        nbtools.write_table(summary, out, "summary")
        summary
        """
    ),
    code(
        """
        table = summary["mean"].unstack("target").reindex(labels)
        table["mean over targets"] = table.mean(axis=1)
        table.round(3)
        """
    ),
    code(
        """
        results[["target", "method", "seed", "accuracy", "macro_f1", "layer", "alpha",
                 "prompt_tokens_per_query", "trainable_params"]].round(3)
        """
    ),
    code(
        """
        fig = plots.bar(results, x="target", y="accuracy", hue="method",
                        title=f"Cross-domain transfer (sources: {', '.join(sources)})")
        nbtools.save_figure(fig, out, "accuracy_by_target_method")
        nbtools.write_results(records, out)
        if tuning:
            nbtools.write_table(pd.DataFrame(tuning), out, "tuning_grid")
        """
    ),
    md(
        "## Conclusion (from this run's numbers)\n"
        "Label-free baselines: every method except `zero_shot`, `cast` and those whose record says"
        " `uses_target_labels` (`few_shot`, the `*_target_dev` adapters), which are references."
    ),
    code(
        """
        means = summary["mean"].unstack("method")
        labelled = sorted(set(results.loc[results["uses_target_labels"].astype(bool), "method"]))
        baselines = [m for m in means.columns if m not in ("zero_shot", "cast", *labelled)]
        wins = 0
        for target, row in means.iterrows():
            if "cast" not in row or "zero_shot" not in row:
                continue
            best = max(baselines, key=lambda m: row[m]) if baselines else None
            line = (f"{target}: CAST {nbtools.verdict(row['cast'], row['zero_shot'])} zero-shot "
                    f"({nbtools.fmt(row['cast'])} vs {nbtools.fmt(row['zero_shot'])})")
            if best is not None:
                line += (f" and {nbtools.verdict(row['cast'], row[best])} the best label-free "
                         f"baseline {best} ({nbtools.fmt(row[best])})")
                wins += row["cast"] > row[best]
            refs = [m for m in labelled if m in row]
            if refs:
                line += "; references with target labels: " + ", ".join(
                    f"{m} {nbtools.fmt(row[m])}" for m in refs)
            print(line + ".")
        if "cast" in means.columns and baselines:
            print(f"CAST beats every label-free baseline on {wins} of {len(means)} target(s) "
                  f"(seeds {seeds}, n={n_test} test examples each).")
        """
    ),
]

# --------------------------------------------------------------------------- 03 cross-lingual

NOTEBOOKS["03_cross_lingual"] = [
    md(
        """
        # 03 Cross-lingual transfer

        **What the paper claims** (abstract): CAST outperforms competitive baselines "across both
        cross-domain and cross-lingual transfer settings".

        CAST_SPEC.md, experiment 3: English source tasks steer target tasks in other languages.
        Pairs come from the datasets' `meta.json` (`family`, `language`, `role`): within a family
        (SIB-200 topics, NusaX sentiment, AfriSenti with TweetEval English, XCOPA), the English
        member is the source and the other members are targets (`pairs="auto"`), or a list of
        `[source, target]` pairs. Label words are English in every language, so label spaces
        match.
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`, one run per pair): SIB-200 eng -> swh and
        -> yor, NusaX eng -> jav, TweetEval eng -> AfriSenti hau; `seeds=[0, 1, 2]`, `n_test=200`,
        `k=4`, `m=32`, `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`,
        `cast_alphas=None`, `top_heads=None`, `n_corrupted=8`, `n_demos=16`, `n_calib=32`,
        `train_steps=None` (`gpu.yaml`: `pairs="auto"`, every family member, `methods="all"`).
        """
    ),
    params_cell(
        "03_cross_lingual",
        """
        pairs = [["sib200_eng", "sib200_swh"]]  # [source, target] pairs; "auto": from meta.json
        families = None  # only these families when pairs is auto; None: all
        methods = ["zero_shot", "cross_task_icl_random", "function_vector", "i2cl", "lora_source",
                   "kasa_source", "cast"]  # or "all"
        seeds = [0]
        n_test = 16
        """,
        METHOD_PARAMS_BODY,
    ),
    code(
        cat(
            METHOD_SETUP,
            """
        import json

        root = castlib.tasks.resolve_data_dir(data_dir)
        meta = {p.parent.name: json.loads(p.read_text(encoding="utf-8"))
                for p in sorted(root.glob("*/meta.json"))}
        if pairs == "auto":
            pairs = []
            for fam in sorted({m["family"] for m in meta.values() if m.get("family")}):
                if families is not None and fam not in families:
                    continue
                members = [n for n, m in meta.items() if m.get("family") == fam]
                english = [n for n in members if meta[n].get("language") == "en"]
                pairs += [[src, tgt] for src in english for tgt in members if tgt not in english]
        pair_table = pd.DataFrame(
            [{"source": s, "target": t, "family": meta[t].get("family"),
              "language": meta[t].get("language_name", meta[t].get("language")),
              "resource_level": meta[t].get("resource_level"), "parallel": meta[t].get("parallel")}
             for s, t in pairs])
        labels = nbtools.expand_methods(methods)
        pair_table
        """,
        )
    ),
    code(
        """
        records = []
        target_tasks = {}
        jobs = [(s, t, seed, lab) for s, t in pairs for seed in seeds for lab in labels]
        for source, target, seed, label in tqdm(jobs, desc="cross-lingual"):
            if target not in target_tasks:
                target_tasks[target] = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
            tgt = target_tasks[target]
            method = nbtools.build_method(label, shared, overrides, data_dir)
            method.fit(lm, [source], tgt, seed=seed)
            rec = method.evaluate(lm, tgt)
            info = pair_table[(pair_table.source == source) & (pair_table.target == target)].iloc[0]
            records.append(nbtools.flat_record(
                rec, method=label, registry_method=rec["method"], source=source,
                family=info["family"], language=info["language"],
                resource_level=info["resource_level"]))
        results = pd.DataFrame(records)
        """,
        IGNORE,
    ),
    md("## Accuracy per target language and method (mean and std over seeds)"),
    code(
        """
        summary = nbtools.mean_std(results, ["family", "language", "target", "method"])
        nbtools.write_table(summary, out, "summary")
        summary
        """
    ),
    code(
        """
        table = summary["mean"].unstack("method").reindex(columns=labels)
        table.round(3)
        """
    ),
    code(
        """
        fig = plots.bar(results, x="language", y="accuracy", hue="method",
                        title="Cross-lingual transfer from English sources")
        nbtools.save_figure(fig, out, "accuracy_by_language_method")
        results_file = nbtools.write_results(records, out)
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
        means = summary["mean"].unstack("method")
        labelled = set(results.loc[results["uses_target_labels"].astype(bool), "method"])
        others = [m for m in means.columns if m != "cast" and m not in labelled]
        if "cast" in means.columns and others:
            beats_zero = int((means["cast"] > means.get("zero_shot", np.inf)).sum())
            beats_all = int((means["cast"] > means[others].max(axis=1)).sum())
            print(f"CAST beats zero-shot on {beats_zero} of {len(means)} cross-lingual target(s) "
                  f"and every label-free baseline ({', '.join(others)}) on {beats_all}.")
            for (fam, lang, target), row in means.iterrows():
                print(f"  {target} ({lang}): CAST {nbtools.fmt(row['cast'])}, "
                      + ", ".join(f"{m} {nbtools.fmt(row[m])}" for m in others))
        """
    ),
]

# --------------------------------------------------------------------------- 04 ablations

NOTEBOOKS["04_ablations"] = [
    md(
        """
        # 04 Ablations

        **What the paper claims** (abstract): CAST's two ingredients are the selection of
        "influential and diverse samples from high-resource tasks" and "their contrastive
        representation-enhanced activations".

        CAST_SPEC.md, experiment 4. From the default CAST (`selection="cast"`,
        `contrast="mean"`, one steering layer, no norm preservation) one factor changes at a time:
        - selection: `random`, `similarity`, `influence` (gamma = 0), `diversity` (k-center),
          `cast`;
        - contrast: `mean` (mean delta), `pca` (first principal direction of the deltas),
          `fewshot_only` (mean few-shot state as a replacement target, no contrast);
        - layers: `layer_window` = 1 (l* only) vs w > 1 (l*..l*+w-1, alpha split evenly);
        - norm preservation: off vs on.

        (l*, alpha) are re-chosen for every variant by the same `source` protocol.
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`): all five selections, all three contrasts,
        `layer_windows=[1, 3]`, `norm_preserving=[False, True]`, `seeds=[0, 1, 2]`, `n_test=200`,
        `k=4`, `m=32`, `n_candidates=256`, `n_queries=64`, `n_tune=16`, `layers=None`,
        `alphas=None` (`gpu.yaml`: five targets, five pooled sources, `layer_windows=[1, 3, 5]`).
        """
    ),
    params_cell(
        "04_ablations",
        """
        targets = ["financial_phrasebank"]
        sources = ["sst2"]
        selections = ["random", "cast"]  # of random, similarity, influence, diversity, cast
        contrasts = ["mean", "pca"]  # of mean, pca, fewshot_only
        layer_windows = [1, 3]  # 1: single layer; w > 1: l*..l*+w-1
        norm_preserving = [False, True]
        seeds = [0]
        n_test = 16
        m = 4
        k = 1
        n_candidates = 8
        n_queries = 4
        n_tune = 2
        layers = [6, 9]  # None: the method's default grid
        alphas = [0.5, 1.0]  # None: the method's default
        batch_size = 16
        """,
    ),
    code(
        """
        base = {"selection": "cast", "contrast": "mean", "layer_window": 1, "norm_preserving": False}
        axes = {"selection": selections, "contrast": contrasts, "layer_window": layer_windows,
                "norm_preserving": norm_preserving}
        variants = []  # (ablation, value, params): one factor changed from the default
        for axis, values in axes.items():
            for value in values:
                variants.append((axis, value, {**base, axis: value}))
        configs = {}  # distinct configurations, each fitted once per (target, seed)
        for _, _, cfg in variants:
            configs.setdefault(tuple(sorted(cfg.items())), cfg)
        common = dict(m=m, k=k, n_candidates=n_candidates, n_queries=n_queries, n_tune=n_tune,
                      batch_size=batch_size, data_dir=data_dir)
        if layers is not None:
            common["layers"] = layers
        if alphas is not None:
            common["alphas"] = alphas
        print(f"{len(variants)} variants, {len(configs)} distinct CAST configurations")
        pd.DataFrame([{"ablation": a, "value": v, "is_default": cfg == base} for a, v, cfg in variants])
        """
    ),
    code(
        """
        fitted, zero_acc = {}, {}
        target_tasks = {t: nbtools.sample_test(castlib.load_task(t, data_dir), n_test) for t in targets}
        jobs = [(t, s, key) for t in targets for s in seeds for key in configs]
        for target, seed, key in tqdm(jobs, desc="ablations"):
            method = castlib.methods.get("cast")(**common, **configs[key])
            method.fit(lm, sources, target_tasks[target], seed=seed)
            fitted[(target, seed, key)] = method.evaluate(lm, target_tasks[target])
        for target in targets:
            zs = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
            zero_acc[target] = zs.fit(lm, sources, target_tasks[target]).evaluate(
                lm, target_tasks[target])["accuracy"]
        records = []
        for target in targets:
            for seed in seeds:
                for axis, value, cfg in variants:
                    rec = fitted[(target, seed, tuple(sorted(cfg.items())))]
                    records.append(nbtools.flat_record(
                        rec, ablation=axis, variant=str(value), is_default=cfg == base,
                        zero_shot_accuracy=zero_acc[target],
                        gain_over_zero_shot=rec["accuracy"] - zero_acc[target]))
        results = pd.DataFrame(records)
        """,
        IGNORE,
    ),
    md("## Accuracy per ablation and variant (mean and std over targets and seeds)"),
    code(
        """
        summary = nbtools.mean_std(results, ["ablation", "variant"])
        summary["gain_over_zero_shot"] = (
            results.groupby(["ablation", "variant"], sort=False)["gain_over_zero_shot"].mean().round(3))
        nbtools.write_table(summary, out, "summary")
        summary
        """
    ),
    code(
        """
        pd.Series(zero_acc, name="zero_shot_accuracy").round(3).to_frame()
        """
    ),
    code(
        """
        results[["target", "seed", "ablation", "variant", "accuracy", "layer", "alpha"]].round(3)
        """
    ),
    code(
        """
        fig = plots.facet_lines(results.assign(variant=results["variant"].astype(str)),
                                x="variant", y="accuracy", col="ablation",
                                reference=float(np.mean(list(zero_acc.values()))),
                                title="CAST ablations (dotted: zero-shot)")
        nbtools.save_figure(fig, out, "ablations")
        results_file = nbtools.write_results(records, out)
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
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
        """
    ),
]

# --------------------------------------------------------------------------- 05 scalability and cost

NOTEBOOKS["05_scalability_cost"] = [
    md(
        """
        # 05 Scalability and cost

        **What the paper claims** (abstract): cross-task in-context learning "faces critical
        challenges in terms of robustness, scalability, and efficiency"; CAST "demonstrates
        superior scalability and lower computational costs".

        CAST_SPEC.md, experiment 5.
        1. Accuracy as the number of source samples m grows: cross-task ICL puts m source
           demonstrations in every prompt, so it is bounded by the context window (a point whose
           longest prompt exceeds `context_tokens` is not run); CAST averages m enhancements into
           one vector and its prompts stay zero-shot length.
        2. Cost per query, each as a ratio to zero-shot: prompt tokens, latency, peak memory of
           inference; and each method's one-off fitting cost (CAST: selection, activations and
           the (l*, alpha) search; LoRA/KaSA: selection and training) in zero-shot queries, with
           its trainable parameters: CAST against cross-task ICL, the other steering methods and
           the parameter-updating LoRA and KaSA, all at the same m.
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`): `m_grid=[4, 8, 16, 32, 64, 128, 256]`,
        `context_tokens=2048` on the embedded model (its own window is 32k; a 2k budget keeps CPU
        runs bounded and shows the bound), `seeds=[0]`, `n_test=200`, `k=4`,
        `n_candidates=256`, `n_queries=64`, `n_tune=32`, `layers=None`, `alphas=None`,
        `n_prompts=16`, `n_samples=32`, `top_heads=None`, `n_corrupted=8`, `n_demos=16`,
        `n_calib=32`, `train_steps=None` (`gpu.yaml`: the model's own window,
        `seeds=[0, 1, 2]`).
        """
    ),
    params_cell(
        "05_scalability_cost",
        """
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
        n_demos = 4  # I2CL: demonstrations
        n_calib = 4  # I2CL: calibration examples
        train_steps = 4  # I2CL, LoRA, KaSA: optimiser steps; None: each method's default
        batch_size = 16
        """,
    ),
    code(
        """
        tgt = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
        config = lm.model.config
        max_pos = getattr(config, "max_position_embeddings", None) or getattr(
            getattr(config, "text_config", None), "max_position_embeddings", None)
        budget = context_tokens or max_pos
        print(f"context budget: {budget} tokens (model maximum: {max_pos})")
        """
    ),
    code(
        """
        from castlib.padding import encode


        def run(method, seed, fitted=False):
            fit_mem = {"peak_mb": float("nan")}
            if not fitted:
                with nbtools.peak_memory(lm.device) as fit_mem:
                    method.fit(lm, sources, tgt, seed=seed)
            with nbtools.peak_memory(lm.device) as mem, measure(lm.device) as stats:
                rec = method.evaluate(lm, tgt)  # inference only
            return {**rec, "infer_peak_memory_mb": mem["peak_mb"],
                    "latency_ms_per_query": 1000 * stats["seconds"] / rec["n"],
                    "extract_seconds": rec["fit_seconds"],
                    "extract_peak_memory_mb": fit_mem["peak_mb"]}


        castlib.evaluate(lm, tgt, examples=tgt.test[:4], batch_size=batch_size)  # warm-up
        records = []
        jobs = [(s, m) for s in seeds for m in m_grid]
        for seed in tqdm(seeds, desc="zero-shot"):
            zs = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
            records.append({**run(zs, seed), "m": 0, "fits_context": True})
        for seed, m in tqdm(jobs, desc="m sweep"):
            icl = castlib.methods.get("cross_task_icl")(k=m, demo_choice="random",
                                                       batch_size=batch_size, data_dir=data_dir)
            icl.fit(lm, sources, tgt, seed=seed)
            builder = icl.prompts(lm, tgt, tgt.test)
            lengths = [len(ids) for ids in encode(lm.tokenizer, [builder(tgt, x) for x in tgt.test])]
            if max(lengths) <= budget:
                records.append({**run(icl, seed, fitted=True), "m": m, "fits_context": True})
            else:  # does not fit: record the prompt length only
                records.append({"model": lm.name, "method": "cross_task_icl", "seed": seed,
                                "target": target, "m": m, "fits_context": False,
                                "accuracy": None, "n": len(tgt.test),
                                "prompt_tokens_per_query": float(np.mean(lengths))})
            cast_params = dict(m=m, k=k, n_candidates=max(n_candidates, m), n_queries=n_queries,
                               n_tune=n_tune, batch_size=batch_size, data_dir=data_dir)
            if layers is not None:
                cast_params["layers"] = layers
            if alphas is not None:
                cast_params["alphas"] = alphas
            cast = castlib.methods.get("cast")(**cast_params)
            records.append({**run(cast, seed), "m": m, "fits_context": True})
        results = pd.DataFrame([nbtools.flat_record(r) for r in records])
        """,
        IGNORE,
    ),
    md(
        "## Accuracy as m grows\n"
        "`prompt_tokens_per_query` is deterministic (the same prompts on every machine)."
    ),
    code(
        """
        acc = (results.groupby(["method", "m"], sort=False)
               .agg(accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                    prompt_tokens_per_query=("prompt_tokens_per_query", "mean"),
                    fits_context=("fits_context", "all"))
               .reset_index())
        acc["accuracy_std"] = acc["accuracy_std"].fillna(0.0)
        nbtools.write_table(acc, out, "accuracy_vs_m")
        acc.round(3)
        """
    ),
    code(
        """
        sweep = results[results["m"] > 0].dropna(subset=["accuracy"])
        fig = plots.lines(sweep, x="m", y="accuracy", hue="method", logx=True,
                          title=f"{target}: accuracy vs source samples m (dotted: zero-shot)")
        ax = fig.axes[0]
        ax.axhline(float(results.loc[results.method == "zero_shot", "accuracy"].mean()),
                   color="0.4", linestyle=":", linewidth=1, label="zero-shot")
        nbtools.save_figure(fig, out, "accuracy_vs_m")
        """
    ),
    code(
        """
        fig = plots.lines(results[results["m"] > 0], x="m", y="prompt_tokens_per_query",
                          hue="method", logx=True, title="Prompt tokens per query vs m")
        fig.axes[0].axhline(budget, color="0.4", linestyle=":", linewidth=1)
        nbtools.save_figure(fig, out, "prompt_tokens_vs_m")
        """
    ),
    md(
        """
        ## Cost per query as a ratio to zero-shot
        Measured wall time and absolute peak memory of inference (CPU: peak resident set,
        sampled; CUDA: peak allocation; weights included, so the ratio shows what a method adds);
        they depend on the machine and its load, so this cell is not compared.
        `extraction_in_zero_shot_queries` = the one-off fit time / zero-shot latency per query.
        """
    ),
    code(
        """
        fits = results[(results["m"] > 0) & results["fits_context"].astype(bool)]
        icl_fits = fits.loc[fits.method == "cross_task_icl", "m"]
        m_cost = cost_m or int(icl_fits.max() if len(icl_fits) else max(m_grid))
        shared = dict(k=k, m=m_cost, n_candidates=max(n_candidates, m_cost), n_queries=n_queries,
                      n_tune=n_tune, layers=layers, n_prompts=n_prompts, n_samples=n_samples,
                      top_heads=top_heads, n_corrupted=n_corrupted, n_demos=n_demos,
                      n_calib=n_calib, steps=train_steps, batch_size=batch_size)
        shared = {name: value for name, value in shared.items() if value is not None}
        cost_records = []
        for seed, label in tqdm([(s, lab) for s in seeds for lab in cost_methods], desc="cost"):
            method = nbtools.build_method(label, shared, {}, data_dir)
            cost_records.append({**run(method, seed), "method": label, "m": m_cost})
        others = pd.DataFrame([nbtools.flat_record(r) for r in cost_records])
        """,
        IGNORE,
    ),
    code(
        """
        zero = results[results.method == "zero_shot"].mean(numeric_only=True)
        swept = results[((results.method == "zero_shot") & (results.m == 0))
                        | ((results.method != "zero_shot") & (results.m == m_cost))]
        rows = []
        for name, part in pd.concat([swept, others]).groupby("method", sort=False):
            if part["accuracy"].isna().all():
                continue
            r = part.mean(numeric_only=True)
            rows.append({
                "method": name, "m": int(r["m"]), "accuracy": r["accuracy"],
                "trainable_params": int(r["trainable_params"]),
                "prompt_tokens_ratio": r["prompt_tokens_per_query"] / zero["prompt_tokens_per_query"],
                "latency_ratio": r["latency_ms_per_query"] / zero["latency_ms_per_query"],
                "peak_memory_ratio": r["infer_peak_memory_mb"] / zero["infer_peak_memory_mb"],
                "fit_in_zero_shot_queries": r["extract_seconds"] * 1000 / zero["latency_ms_per_query"],
                "latency_ms_per_query": r["latency_ms_per_query"],
                "infer_peak_memory_mb": r["infer_peak_memory_mb"],
                "fit_seconds": r["extract_seconds"],
                "fit_peak_memory_mb": r["extract_peak_memory_mb"],
            })
        cost = pd.DataFrame(rows)
        nbtools.write_table(cost, out, "cost_ratios")
        # results.json: the m sweep and the cost-table methods (rows with cost_only=True)
        results_file = nbtools.write_results(
            results.to_dict("records") + others.assign(cost_only=True).to_dict("records"), out)
        cost.round(2)
        """,
        IGNORE,
    ),
    code(
        """
        fig = plots.bar(cost, x="method", y="latency_ratio", ylim=None, errorbar=None,
                        title=f"Inference latency per query / zero-shot (m={m_cost})")
        nbtools.save_figure(fig, out, "cost_latency_ratio")
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
        icl_rows = acc[acc.method == "cross_task_icl"].set_index("m")
        cast_rows = acc[acc.method == "cast"].set_index("m")
        zero_acc = float(acc.loc[acc.method == "zero_shot", "accuracy"].iloc[0])
        zero_tok = float(acc.loc[acc.method == "zero_shot", "prompt_tokens_per_query"].iloc[0])
        lo, hi = min(m_grid), max(m_grid)
        print(f"Cross-task ICL prompts grow from {nbtools.fmt(icl_rows.loc[lo, 'prompt_tokens_per_query'], 1)}"
              f" to {nbtools.fmt(icl_rows.loc[hi, 'prompt_tokens_per_query'], 1)} tokens per query as m goes "
              f"{lo} -> {hi}; CAST stays at {nbtools.fmt(cast_rows.loc[hi, 'prompt_tokens_per_query'], 1)}"
              f" (zero-shot: {nbtools.fmt(zero_tok, 1)}).")
        unfit = icl_rows.index[~icl_rows["fits_context"].astype(bool)].tolist()
        print(f"ICL does not fit the {budget}-token context at m = {unfit}." if unfit else
              f"ICL fits the {budget}-token context at every m tried.")
        for m in m_grid:
            icl_acc, cast_acc = icl_rows.loc[m, "accuracy"], cast_rows.loc[m, "accuracy"]
            versus = (f"CAST {nbtools.verdict(cast_acc, icl_acc)} ICL" if pd.notna(icl_acc)
                      else "ICL does not fit the context")
            print(f"m={m}: CAST {nbtools.fmt(cast_acc)}, cross-task ICL {nbtools.fmt(icl_acc)}, "
                  f"zero-shot {nbtools.fmt(zero_acc)}: {versus}; CAST "
                  f"{nbtools.verdict(cast_acc, zero_acc)} zero-shot.")
        """
    ),
    code(
        """
        c = cost.set_index("method")
        if "cast" in c.index:
            print(f"At m={m_cost}, CAST's latency is {nbtools.fmt(c.loc['cast', 'latency_ratio'], 2)}x "
                  f"zero-shot's per query and its one-off extraction costs "
                  f"{nbtools.fmt(c.loc['cast', 'fit_in_zero_shot_queries'], 0)} zero-shot queries.")
        if "cross_task_icl" in c.index:
            print(f"Cross-task ICL's latency is {nbtools.fmt(c.loc['cross_task_icl', 'latency_ratio'], 2)}x"
                  f" zero-shot's per query, on every query.")
        for name, row in c.drop(index=["zero_shot", "cross_task_icl", "cast"], errors="ignore").iterrows():
            print(f"{name}: accuracy {nbtools.fmt(row['accuracy'])}, latency "
                  f"{nbtools.fmt(row['latency_ratio'], 2)}x zero-shot, one-off fit "
                  f"{nbtools.fmt(row['fit_in_zero_shot_queries'], 0)} zero-shot queries, "
                  f"{int(row['trainable_params'])} trained parameters.")
        """,
        IGNORE,
    ),
]

# --------------------------------------------------------------------------- 06 sensitivity

NOTEBOOKS["06_sensitivity"] = [
    md(
        """
        # 06 Sensitivity

        **What the paper claims** (abstract): cross-task ICL "faces critical challenges in terms
        of robustness"; CAST is proposed as a robust alternative. The abstract gives no
        hyper-parameter values; CAST_SPEC.md makes each an explicit parameter.

        CAST_SPEC.md, experiment 6: sensitivity to alpha, l*, k (demonstrations per contrastive
        prompt), m (selected samples), gamma (diversity weight), the graph's k and the diffusion
        steps T. A base CAST is fitted with the `source` protocol; then
        - alpha and l* are swept with the base vector (no refit), one at a time, the other held
          at its chosen value (alpha = 0 is zero-shot);
        - k, m, gamma, graph k and T are swept one at a time by refitting, with l* and alpha held
          at the base run's values (so only the swept parameter changes).
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`): `seeds=[0]` (`gpu.yaml`: `[0, 1, 2]`),
        `n_test=200`, `m=32`, `k=4`, `n_candidates=256`, `n_queries=64`, `n_tune=32`,
        `layers=None`, `alphas=None`, `alpha_grid=[0, 0.25, 0.5, 1, 2, 4, 8]`,
        `layer_grid=None` (every layer), `refit_grid={"k": [1, 2, 8], "m": [8, 16, 64, 128],
        "gamma": [0, 0.25, 1, 2], "graph_k": [5, 20, 40], "diffusion_steps": [0, 1, 3, 4]}`.
        """
    ),
    params_cell(
        "06_sensitivity",
        """
        sources = ["sst2"]
        target = "financial_phrasebank"
        seeds = [0]
        n_test = 16
        m = 4
        k = 1
        gamma = 0.5
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
        """,
    ),
    code(
        """
        tgt = nbtools.sample_test(castlib.load_task(target, data_dir), n_test)
        base_params = dict(m=m, k=k, gamma=gamma, graph_k=graph_k, diffusion_steps=diffusion_steps,
                           n_candidates=n_candidates, n_queries=n_queries, n_tune=n_tune,
                           batch_size=batch_size, data_dir=data_dir)
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
                    (p, base_params[p]) for p in refit_grid]:
                records.append({**point, "param": param, "value": value, "is_base": True,
                                "accuracy": rec["accuracy"]})
            for param, grid in [("alpha", alpha_grid), ("layer", sweep_layers)]:
                for value in tqdm([v for v in grid if v != (a_star if param == "alpha" else l_star)],
                                  desc=param, leave=False):
                    layer, alpha = (l_star, value) if param == "alpha" else (value, a_star)
                    with base.steering(lm, layer, alpha):
                        res = castlib.evaluate(lm, tgt, batch_size=batch_size)
                    records.append({**point, "param": param, "value": value, "is_base": False,
                                    "accuracy": res.accuracy})
            for param, grid in refit_grid.items():
                for value in tqdm([v for v in grid if v != base_params[param]], desc=param,
                                  leave=False):
                    params = {**base_params, param: value, "layers": [l_star], "alphas": [a_star],
                              "n_tune": 1}  # (l*, alpha) held: the tuning step is a no-op
                    params["n_candidates"] = max(params["n_candidates"], params["m"])
                    method = castlib.methods.get("cast")(**params).fit(lm, sources, tgt, seed=seed)
                    records.append({**point, "param": param, "value": value, "is_base": False,
                                    "accuracy": method.evaluate(lm, tgt)["accuracy"]})
        results = pd.DataFrame(records)
        results.insert(0, "model", lm.name)
        results.insert(1, "method", "cast")
        results.insert(2, "target", target)
        """,
        IGNORE,
    ),
    md("## Accuracy per parameter value (mean over seeds; `is_base`: the base run's value)"),
    code(
        """
        table = (results.groupby(["param", "value"], sort=False)
                 .agg(accuracy=("accuracy", "mean"), is_base=("is_base", "any"))
                 .reset_index().sort_values(["param", "value"], kind="stable"))
        nbtools.write_table(table, out, "sensitivity")
        table.assign(value=table["value"].map(lambda v: f"{v:g}")).round(3).reset_index(drop=True)
        """
    ),
    code(
        """
        zero = results[(results.param == "alpha") & (results.value == 0)]["accuracy"]
        fig = plots.facet_lines(results.astype({"value": float}), x="value", y="accuracy", col="param",
                                reference=float(zero.mean()) if len(zero) else None,
                                title=f"CAST sensitivity on {target} (dotted: alpha = 0, zero-shot)")
        nbtools.save_figure(fig, out, "sensitivity")
        results_file = nbtools.write_results(results.to_dict("records"), out)
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
        spread = table.groupby("param", sort=False)["accuracy"].agg(lambda s: s.max() - s.min())
        for param, group in table.groupby("param", sort=False):
            best = group.loc[group["accuracy"].idxmax()]
            base_acc = group.loc[group["is_base"], "accuracy"].iloc[0]
            print(f"{param}: accuracy spans {nbtools.fmt(spread[param])} over {len(group)} value(s); "
                  f"best {best['value']:g} ({nbtools.fmt(best['accuracy'])}), base "
                  f"{nbtools.fmt(base_acc)}.")
        swept = spread[table.groupby("param", sort=False).size() > 1]
        if len(swept):
            most = ", ".join(swept.index[swept == swept.max()])
            least = ", ".join(swept.index[swept == swept.min()])
            print(f"Most sensitive to {most} (span {nbtools.fmt(swept.max())}), least to "
                  f"{least} (span {nbtools.fmt(swept.min())}).")
        """
    ),
]

# --------------------------------------------------------------------------- 07 transfer vs similarity

NOTEBOOKS["07_transfer_vs_similarity"] = [
    md(
        """
        # 07 Transfer vs task similarity

        **What the paper claims** (abstract): the ICL-enhanced activations "have consistent
        patterns across different tasks", which is what lets a source task's activations adapt
        the model to a different target task.

        CAST_SPEC.md, analysis 7: for every (source, target) pair, CAST's gain over zero-shot
        against the cosine between the source's and the target's ICL enhancement vectors
        `v_l = mean_x [h_l(Pk(x; D)) - h_l(P0(x))]` (in-task demonstrations, as in notebook 01;
        the target's uses a few labelled target train examples, for this analysis only). The
        cosine is read at `similarity_layer` and at the l* CAST chose.
        """
    ),
    md(
        """
        ## Parameters
        **Full size** (`papermill_runs/full_cpu.yaml`): `sources` = `sst2`, `ag_news`, `mnli`,
        `commonsense_qa`; `targets` = `financial_phrasebank`, `arc_challenge`, `social_iqa`,
        `sciq`; `seeds=[0]`, `n_test=200`, `n_examples=32`, `k=4`, `m=32`, `n_candidates=256`,
        `n_queries=64`, `n_tune=32`, `layers=None`, `alphas=None` (`gpu.yaml`: 8 sources x 5
        targets, 3 seeds).
        """
    ),
    params_cell(
        "07_transfer_vs_similarity",
        """
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
        """,
    ),
    code(
        """
        sim_layer = similarity_layer if similarity_layer is not None else lm.n_layers // 2
        tasks_all = nbtools.load_tasks(list(sources) + list(targets), data_dir)
        target_tasks = {t: nbtools.sample_test(tasks_all[t], n_test) for t in targets}
        enh = {}
        for name, task in tqdm(tasks_all.items(), desc="enhancement vectors"):
            d, _, _ = nbtools.icl_deltas(lm, task, n_examples, k, seed=0, batch_size=batch_size)
            enh[name] = d.mean(0)  # [L, hidden]
        cast_params = dict(m=m, k=k, n_candidates=n_candidates, n_queries=n_queries, n_tune=n_tune,
                           batch_size=batch_size, data_dir=data_dir)
        if layers is not None:
            cast_params["layers"] = layers
        if alphas is not None:
            cast_params["alphas"] = alphas
        records = []
        for target in tqdm(targets, desc="targets"):
            tgt = target_tasks[target]
            zero = castlib.methods.get("zero_shot")(batch_size=batch_size, data_dir=data_dir)
            zero_acc = zero.fit(lm, sources, tgt).evaluate(lm, tgt)["accuracy"]
            for source in tqdm(sources, desc=target, leave=False):
                for seed in seeds:
                    method = castlib.methods.get("cast")(**cast_params).fit(lm, [source], tgt, seed=seed)
                    rec = method.evaluate(lm, tgt)
                    l_star = rec["layer"]
                    records.append(nbtools.flat_record(
                        rec, source=source, zero_shot_accuracy=zero_acc,
                        gain=rec["accuracy"] - zero_acc, similarity_layer=sim_layer,
                        cosine=float(torch.cosine_similarity(enh[source][sim_layer], enh[target][sim_layer], dim=0)),
                        cosine_at_l_star=float(torch.cosine_similarity(enh[source][l_star], enh[target][l_star], dim=0)),
                    ))
        results = pd.DataFrame(records)
        """,
        IGNORE,
    ),
    md("## Gain over zero-shot and enhancement-vector cosine per pair"),
    code(
        """
        pairs = results.groupby(["target", "source"], sort=False).agg(
            cosine=("cosine", "mean"), cosine_at_l_star=("cosine_at_l_star", "mean"),
            zero_shot=("zero_shot_accuracy", "mean"), cast=("accuracy", "mean"),
            gain=("gain", "mean"), gain_std=("gain", "std")).reset_index()
        pairs["gain_std"] = pairs["gain_std"].fillna(0.0)
        nbtools.write_table(pairs, out, "pairs")
        pairs.round(3)
        """
    ),
    code(
        """
        fig = plots.scatter(pairs, x="cosine", y="gain", hue="target", style="target", fit=True,
                            label="source",
                            title=f"Gain over zero-shot vs cosine of enhancement vectors (layer {sim_layer})")
        fig.axes[0].axhline(0.0, color="0.4", linestyle=":", linewidth=1)
        nbtools.save_figure(fig, out, "gain_vs_cosine")
        results_file = nbtools.write_results(records, out)
        """
    ),
    md("## Conclusion (from this run's numbers)"),
    code(
        """
        def pearson(x, y):
            if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
                return float("nan")
            return float(np.corrcoef(x, y)[0, 1])

        r = pearson(pairs["cosine"].to_numpy(), pairs["gain"].to_numpy())
        r_l = pearson(pairs["cosine_at_l_star"].to_numpy(), pairs["gain"].to_numpy())
        if np.isnan(r):
            print(f"{len(pairs)} (source, target) pair(s): too few (or constant) for a correlation.")
        else:
            trend = "more similar sources transfer better" if r > 0.3 else (
                "more similar sources transfer worse" if r < -0.3 else "no clear relation")
            print(f"Pearson r between cosine (layer {sim_layer}) and CAST's gain over {len(pairs)} pairs: "
                  f"{nbtools.fmt(r, 2)} ({trend}); at l*: {nbtools.fmt(r_l, 2)}.")
        for row in pairs.itertuples():
            print(f"  {row.source} -> {row.target}: cosine {nbtools.fmt(row.cosine)}, gain "
                  f"{nbtools.fmt(row.gain)} (CAST {nbtools.verdict(row.cast, row.zero_shot)} zero-shot)")
        """
    ),
]


def keep_outputs(old: nbformat.NotebookNode, new: nbformat.NotebookNode) -> bool:
    """Carry the outputs of ``old`` over to ``new`` when their code cells (sources and tags)
    are identical, so that editing markdown keeps a notebook's executed outputs."""

    def key(nb: nbformat.NotebookNode) -> list[tuple[str, tuple[str, ...]]]:
        return [
            (c.source, tuple(c.metadata.get("tags", []))) for c in nb.cells if c.cell_type == "code"
        ]

    if key(old) != key(new):
        return False
    old_code = [c for c in old.cells if c.cell_type == "code"]
    new_code = [c for c in new.cells if c.cell_type == "code"]
    for a, b in zip(old_code, new_code, strict=True):
        b.outputs, b.execution_count = a.outputs, a.execution_count
    if "language_info" in old.metadata:
        new.metadata["language_info"] = old.metadata["language_info"]
    return True


def build(names: list[str] | None = None) -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        if names and not any(n in name for n in names):
            continue
        path = HERE / f"{name}.ipynb"
        nb = notebook(name, cells)
        if path.is_file():
            keep_outputs(nbformat.read(path, as_version=4), nb)
        nbformat.validate(nb)
        nbformat.write(nb, path)
        written.append(path)
    return written


def execute(path: Path, timeout: int = 3600) -> None:
    """Execute a notebook in place, in its own folder, with the notebook's kernel."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=timeout, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="only notebooks whose name contains one of these")
    parser.add_argument("--execute", action="store_true", help="execute them in place")
    args = parser.parse_args(argv)
    for path in build(args.names):
        print(f"wrote {path.name}")
        if args.execute:
            import time

            t0 = time.perf_counter()
            execute(path)
            print(f"  executed in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
