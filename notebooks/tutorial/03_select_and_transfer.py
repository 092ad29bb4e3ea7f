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
# # Tutorial 3: select influential and diverse source samples, transfer across tasks
#
# CAST adapts a model to a low-resource *target* task with the ICL enhancement of a
# high-resource *source* task (tutorial 2's vector, made from another task). It has two steps:
# it **selects** m source samples that are *influential* (close, in the model's own
# representation, to the target's unlabelled inputs) and *diverse* (no near-duplicates), then
# builds the **contrastive** steering vector from them and adds it to the target's zero-shot
# run.
#
# ![CAST in two steps: selection of influential and diverse source samples, then the contrastive steering vector added to the target's zero-shot run](figures/cast_two_steps.png)
#
# In this notebook you
#
# 1. embed source candidates and target queries with the model itself,
# 2. compute the coverage objective that selection maximises,
# 3. measure redundancy, and compare CAST's selection with its variants,
# 4. build the vector from the selected samples (demonstrations from the selection, never
#    the sample itself) and steer the target, with (layer, alpha) chosen on held-out *source*
#    examples: no target label is read.
#
# As in tutorial 1, each exercise cell (tagged `exercise`) is followed by a check cell, and
# each exercise has a time estimate, folded hints and a link to its solution. The selection is
# `castlib.selection` (CAST_SPEC.md, "The method", step 2). Your time: about an hour; the cells
# run in about a minute and a half of CPU time. This notebook comes twice:
# [the exercise version](03_select_and_transfer.ipynb) to do and
# [the solutions version](solutions/03_select_and_transfer.ipynb), done and executed.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M (no download), or any Hugging Face causal LM
device = "cpu"
source_name = "sst2"  # high-resource source task (labelled)
target_name = "financial_phrasebank"  # low-resource target task (unlabelled inputs only)
n_candidates = 48  # source candidates
n_queries = 16  # unlabelled target inputs that guide the selection
n_tune = 16  # held-out source examples for choosing (layer, alpha)
n_test = 32  # target test examples (a seeded sample)
m = 8  # selected source samples
k = 2  # demonstrations per few-shot prompt
layer_grid = [6, 9]
alpha_grid = [0.0, 0.5, 1.0]  # 0.0 is the unsteered model, the baseline
seed = 0

# %% [markdown]
# ### Setup
# Imports, the helpers the check cells use (`castlib.tutorial_checks`) and the model. Nothing
# to change here: run it once.

# %% tags=["nbval-ignore-output"]
import random
import warnings

from tqdm import TqdmWarning

# before castlib imports tqdm.auto, which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import pandas as pd
import torch
from IPython.display import Markdown, display

import castlib
from castlib import selection
from castlib.tasks import sample_examples
from castlib.tutorial_checks import attempt

lm = castlib.load_model(model, device=device)

# %%
source = castlib.load_task(source_name)
target = castlib.load_task(target_name)
rng = random.Random(seed)
drawn = rng.sample(list(source.train), n_candidates + n_tune)
candidates, tune = drawn[:n_candidates], drawn[n_candidates:]
queries = rng.sample(list(target.train), n_queries)  # only their inputs are used, never labels
test = sample_examples(target.test, n_test, seed=seed)
embed_layer = lm.n_layers // 2
print(f"source {source.name}: {len(candidates)} candidates, {len(tune)} for tuning")
print(f"target {target.name}: {len(queries)} unlabelled queries, {len(test)} test examples")

# %% [markdown]
# ## Exercise 3.1: the model as its own encoder
# *About 10 minutes.* This exercise: [to do](03_select_and_transfer.ipynb#Exercise-3.1:-the-model-as-its-own-encoder) ·
# [solved](solutions/03_select_and_transfer.ipynb#Exercise-3.1:-the-model-as-its-own-encoder)
#
# Embed an example x as the L2-normalised zero-shot state at the middle block,
# `e(x) = h_le(P0(x)) / ||h_le(P0(x))||` with `le = embed_layer`. Write `embed(task, examples)`:
# a float tensor `[len(examples), hidden]` of unit rows
# (`castlib.record_activations(lm, prompts, layers=[embed_layer])` gives `[n, 1, hidden]`).
#
# <details><summary>Hint</summary>
#
# The prompts are `castlib.zero_shot(task, x)`; take `[:, 0]` of the recorded states and
# divide each row by its norm (`torch.nn.functional.normalize(states, dim=1)`).
# </details>


# %% tags=["exercise"]
def embed(task, examples):
    """L2-normalised zero-shot states at ``embed_layer``, ``[len(examples), hidden]``."""
    ...  # your code


# %%
cand_emb = attempt(
    "3.1", embed, source, candidates, on=f"the {len(candidates)} {source.name} candidates"
)
query_emb = attempt("3.1", embed, target, queries, on=f"the {len(queries)} {target.name} queries")
assert torch.is_tensor(cand_emb) and tuple(cand_emb.shape) == (n_candidates, lm.hidden_size), (
    f"Exercise 3.1: expected a tensor of shape {(n_candidates, lm.hidden_size)}, got "
    f"{getattr(cand_emb, 'shape', cand_emb)}"
)
assert torch.allclose(cand_emb.norm(dim=1), torch.ones(n_candidates), atol=1e-4), (
    "Exercise 3.1: every row must have norm 1 (divide each state by its own norm)"
)
raw = castlib.record_activations(lm, [castlib.zero_shot(source, candidates[0])])[0, embed_layer]
assert torch.allclose(cand_emb[0], raw / raw.norm(), atol=1e-4), (
    f"Exercise 3.1: row 0 is not the normalised zero-shot state of candidate 0 at block "
    f"{embed_layer}: use castlib.zero_shot(task, x) prompts and layers=[embed_layer]"
)
print("Exercise 3.1: correct")

# %% [markdown]
# ## Exercise 3.2: coverage
# *About 10 minutes.* This exercise: [to do](03_select_and_transfer.ipynb#Exercise-3.2:-coverage) ·
# [solved](solutions/03_select_and_transfer.ipynb#Exercise-3.2:-coverage)
#
# Selection builds a k-nearest-neighbour graph over candidates and queries and diffuses over it
# for T steps; `I[q, s]` is how much mass candidate s sends to query q
# (`selection.influence_matrix`). A set S of candidates covers the queries by
#
# `F(S) = (1 / |Q|) * sum over the |Q| queries q of max over s in S of I[q, s]`,   with
# `F(empty set) = 0` (the mean over queries, so F means the same for 7 queries as for 2,000).
#
# Write `coverage(influence, S)` (`influence` is I) for a list of candidate indices S (a Python float).
#
# <details><summary>Hint</summary>
#
# `influence[:, S]` keeps the selected columns; `.max(dim=1).values` is each query's best
# selected candidate; `.mean()` averages over the queries. An empty S has no column to take a
# maximum over: return 0.0 before indexing.
# </details>

# %%
influence = selection.influence_matrix(cand_emb, query_emb, k=10, steps=2)
print(
    f"I: {tuple(influence.shape)} (queries x candidates), {int((influence > 0).sum())} non-zero entries"
)


# %% tags=["exercise"]
def coverage(influence, S):
    """``F(S) = mean_q max_{s in S} influence[q, s]``, 0 for an empty ``S``."""
    ...  # your code: a Python float


# %%
for S in ([], [0], [3, 7], list(range(0, n_candidates, 5)), list(range(n_candidates))):
    got = attempt("3.2", coverage, influence, S, on=f"S = {S}")
    want = selection.coverage(influence, S)
    assert isinstance(got, float) and abs(got - want) < 1e-9, (
        f"Exercise 3.2: for S = {S} the coverage is {want:.6f}, you returned {got!r}. For each "
        "query (row) take the largest influence among the selected columns, then average over "
        "queries; the empty set covers nothing."
    )
print("Exercise 3.2: correct")

# %% [markdown]
# ## Exercise 3.3: redundancy
# *About 10 minutes.* This exercise: [to do](03_select_and_transfer.ipynb#Exercise-3.3:-redundancy) ·
# [solved](solutions/03_select_and_transfer.ipynb#Exercise-3.3:-redundancy)
#
# Greedy coverage alone (`influence`) happily picks near-duplicates; CAST's greedy step
# subtracts `gamma * max cos(e_u, e_s)` over the samples s already chosen. Write
# `max_pair_cosine(emb, S)`: the largest cosine between two *different* selected samples
# (rows of `emb` are unit vectors).
#
# <details><summary>Hint</summary>
#
# `x = emb[S]`; `x @ x.T` holds every pairwise cosine, with 1 on the diagonal (each sample with
# itself). Overwrite the diagonal (`fill_diagonal_(-float("inf"))`) before taking the maximum.
# </details>


# %% tags=["exercise"]
def max_pair_cosine(emb, S):
    """Largest cosine between two different rows of ``emb[S]`` (unit rows)."""
    ...  # your code: a Python float


# %%
for S in ([0, 1], [2, 5, 9], list(range(12))):
    got = attempt("3.3", max_pair_cosine, cand_emb, S, on=f"S = {S}")
    pairs = [float(cand_emb[a] @ cand_emb[b]) for a in S for b in S if a != b]
    assert isinstance(got, float) and abs(got - max(pairs)) < 1e-5, (
        f"Exercise 3.3: for S = {S} the largest cosine between two different samples is "
        f"{max(pairs):.4f}, you returned {got!r}. Leave out each sample's cosine with itself "
        "(always 1)."
    )
print("Exercise 3.3: correct")

# %% [markdown]
# The selection variants side by side (`selection.select`, each seeded): coverage of the
# target queries, redundancy, and how many of each source label they picked. If every raw
# cosine is close to 1, the embeddings share one dominant component (as the zero-shot states
# of tutorial 1 did), so the redundancy penalty `gamma * max cos` hardly varies between
# candidates; the centred column (each embedding minus the candidates' mean) shows the
# differences that remain.

# %%
picked = {
    method: selection.select(cand_emb, m, method=method, queries=query_emb, seed=seed)
    for method in ("random", "similarity", "diversity", "influence", "cast")
}
centred = torch.nn.functional.normalize(cand_emb - cand_emb.mean(0), dim=1)
labels = [source.answer(x) for x in candidates]
all_pairs = cand_emb @ cand_emb.T
print(f"smallest cosine between two candidates (raw embeddings): {float(all_pairs.min()):.3f}")
pd.DataFrame(
    [
        {
            "selection": method,
            "coverage F(S)": coverage(influence, S),
            "max pair cosine": max_pair_cosine(cand_emb, S),
            "max pair cosine, centred": max_pair_cosine(centred, S),
            "labels picked": dict(sorted(pd.Series([labels[i] for i in S]).value_counts().items())),
        }
        for method, S in picked.items()
    ]
).round(3)

# %% [markdown]
# ## Exercise 3.4: the transfer vector, and the target steered
# *About 10 minutes.* This exercise: [to do](03_select_and_transfer.ipynb#Exercise-3.4:-the-transfer-vector,-and-the-target-steered) ·
# [solved](solutions/03_select_and_transfer.ipynb#Exercise-3.4:-the-transfer-vector,-and-the-target-steered)
#
# For each selected sample s, the contrastive pair is `P0(s)` and `Pk(s; D_s)` with k
# demonstrations `D_s` drawn from the selection *without s*; `v = mean_s [h(Pk) - h(P0)]`.
# Write `demos_for(selected, k, rng)`: one list of k demonstrations per selected sample, from
# `selected` and never the sample itself.
#
# <details><summary>Hint</summary>
#
# As exercise 2.1, with `selected` as the pool: `rng.sample` among the selected samples whose
# `.id` is not s's.
# </details>


# %% tags=["exercise"]
def demos_for(selected, k, rng):
    """For each s of ``selected``, ``k`` other selected examples (seeded by ``rng``)."""
    ...  # your code: a list of len(selected) lists of k Examples


# %%
selected = [candidates[i] for i in picked["cast"]]
demos = attempt(
    "3.4",
    demos_for,
    selected,
    k,
    random.Random(seed),
    on=f"the {len(selected)} selected samples, k={k}",
)
chosen = {s.id for s in selected}
assert len(demos) == len(selected), (
    f"Exercise 3.4: one list of demonstrations per selected sample ({len(selected)}), got "
    f"{len(demos)}"
)
for s, d in zip(selected, demos, strict=True):
    assert len(d) == k and len({e.id for e in d}) == k, (
        f"Exercise 3.4: {s.id} needs {k} distinct demonstrations, got {[e.id for e in d]}"
    )
    assert s.id not in {e.id for e in d}, (
        f"Exercise 3.4: {s.id} is among its own demonstrations (its answer would be in the "
        "prompt); draw from the selection without s"
    )
    assert {e.id for e in d} <= chosen, (
        f"Exercise 3.4: the demonstrations of {s.id} must be selected samples (the "
        "influential and diverse set), not other candidates"
    )
print("Exercise 3.4: correct")
h_few = castlib.record_activations(
    lm, [castlib.k_shot(source, s, d) for s, d in zip(selected, demos, strict=True)]
)
h_zero = castlib.record_activations(lm, [castlib.zero_shot(source, s) for s in selected])
vector = castlib.SteeringVector.from_tensor(
    (h_few - h_zero).mean(0), model_id=lm.name, n_layers=lm.n_layers
)

# %% [markdown]
# (layer, alpha) are chosen on the held-out *source* examples, steered zero-shot (the `source`
# protocol: no target label is read), with the unsteered model (alpha 0) among the candidates;
# then the target's test sample is scored once.

# %%
grid = [(layer, alpha) for layer in layer_grid for alpha in alpha_grid]
configs = [lambda b=b, a=a: castlib.steer(lm, vector, alpha=a, layers=[b]) for b, a in grid]
tuning = pd.DataFrame(
    [
        {"layer": b, "alpha": a, "source accuracy": r.accuracy}
        for (b, a), r in zip(
            grid, castlib.evaluate_sweep(lm, source, configs, examples=tune), strict=True
        )
    ]
)
best = tuning.loc[tuning["source accuracy"].idxmax()]
layer, alpha = int(best["layer"]), float(best["alpha"])
zero = castlib.evaluate(lm, target, examples=test)
with castlib.steer(lm, vector, alpha=alpha, layers=[layer]):
    steered = castlib.evaluate(lm, target, examples=test)
print(tuning.round(3).to_string(index=False))
pd.DataFrame(
    [
        {"target": target.name, "method": "zero-shot (alpha 0)", "accuracy": zero.accuracy},
        {
            "target": target.name,
            "method": f"steered, {source.name} vector, layer {layer}, alpha {alpha}",
            "accuracy": steered.accuracy,
        },
    ]
).round(3)

# %% [markdown]
# **Why a pair tuned on the source can lower the target.** The pair is the best one for the
# *source's* decision, on source rows; the target asks another question with other labels, and
# a shift that helps one decision can hurt the other. Where the target's predictions moved, and
# how much of the difference chance alone would give, from this run:

# %%
src_zero = float(tuning.query("alpha == 0")["source accuracy"].iloc[0])
moved = [
    (a["correct"], b["correct"])
    for a, b in zip(zero.predictions, steered.predictions, strict=True)
    if a["pred"] != b["pred"]
]
predicted = (
    pd.DataFrame(
        {
            "gold": pd.Series([p["gold"] for p in zero.predictions]).value_counts(),
            "zero-shot": pd.Series([p["pred"] for p in zero.predictions]).value_counts(),
            "steered": pd.Series([p["pred"] for p in steered.predictions]).value_counts(),
        },
        index=list(target.labels),
    )
    .fillna(0)
    .astype(int)
)
shift = predicted["steered"] - predicted["zero-shot"]
display(
    Markdown(
        f"On the {len(tune)} source tuning rows the pair (layer {layer}, alpha {alpha}) scored "
        f"{float(best['source accuracy']):.3f} against {src_zero:.3f} unsteered. On the "
        f"{len(test)} target rows it moved {len(moved)} predictions "
        f"({sum(not a and b for a, b in moved)} wrong to right, "
        f"{sum(a and not b for a, b in moved)} right to wrong, "
        f"{sum(not a and not b for a, b in moved)} from one wrong label to another): "
        f"{zero.accuracy:.3f} to {steered.accuracy:.3f}. The largest shift is towards "
        f"'{shift.idxmax()}' ({int(predicted.loc[shift.idxmax(), 'zero-shot'])} to "
        f"{int(predicted.loc[shift.idxmax(), 'steered'])} predictions), a label that "
        f"{int(predicted.loc[shift.idxmax(), 'gold'])} of the {len(test)} rows carry; the "
        f"{source.name} vector was made from the labels {list(source.labels)}."
        + "".join(
            f" '{label}', a label {source.name} does not have, is predicted "
            f"{int(predicted.loc[label, 'zero-shot'])} times zero-shot and "
            f"{int(predicted.loc[label, 'steered'])} times steered, and "
            f"{int(predicted.loc[label, 'gold'])} rows carry it."
            for label in target.labels
            if label not in source.labels
        )
        + " If each moved "
        "row were as likely to go either way (no effect), the difference would have a "
        f"standard deviation of sqrt({len(moved)}) / {len(test)} = "
        f"{len(moved) ** 0.5 / len(test):.3f}."
    )
)
predicted

# %% [markdown]
# **What to take away.** The target was adapted without a single target label and without
# longer prompts: the vector came from labelled *source* samples chosen to cover the target's
# inputs without duplicates, and (layer, alpha) from source examples. At this size (`m`
# samples, `n_test` test rows) read the difference to zero-shot against the chance range
# computed above, and remember that the pair was the source's best, not the target's; the
# full-size cross-domain results are in `papermill_runs/results/full_cpu/02_cross_domain/` and
# on the report page (`make report`).
# In castlib the whole pipeline (with the full selection graph over candidates and queries, and
# the same `source` protocol) is the `cast` method:
# `cast = castlib.methods.get("cast")(m=32, k=4)`, `cast.fit(lm, [source_name], target_name)`,
# `cast.evaluate(lm, target_name, sample=200)`; notebook `00_quickstart` runs it.
