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
# # Tutorial 2: an ICL-enhancement vector, built and applied
#
# In-context examples change the state the model answers from. For a training example x with
# k demonstrations D_x of the same task, the *ICL enhancement* at block l is
#
# `delta_l(x) = h_l(Pk(x; D_x)) - h_l(P0(x))`
#
# (the few-shot state minus the zero-shot state, at the last real token; tutorial 1). Its mean
# over examples, `v_l = mean_x delta_l(x)`, is a steering vector: adding `alpha * v_l` to the
# output of block l on a *zero-shot* prompt moves the model towards its few-shot behaviour,
# without the demonstrations in the prompt. In this notebook you
#
# 1. pick demonstrations for each example without leaking the example's own answer,
# 2. record both states and build `v`,
# 3. choose the layer and the scale on held-out dev examples (never on the test split), then
#    steer the test split once.
#
# As in tutorial 1, each exercise cell (tagged `exercise`) is followed by a check cell.
# Time: about two minutes of CPU time. This notebook comes twice:
# `notebooks/tutorial/` has the exercises to do, `notebooks/tutorial/solutions/` has them done.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M (no download), or any Hugging Face causal LM
device = "cpu"
task_name = "sst2"
n_train = 16  # examples the vector is averaged over
k = 4  # demonstrations per few-shot prompt
n_dev = 16  # held-out train examples for choosing (layer, alpha)
n_test = 32  # test examples (a seeded sample)
layer_grid = [6, 9]  # candidate layers
alpha_grid = [0.5, 1.0]  # candidate scales
seed = 0

# %% tags=["nbval-ignore-output"]
import random
import warnings

from tqdm import TqdmWarning

# before castlib imports tqdm.auto, which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import pandas as pd
import torch

import castlib
from castlib.repro import plots
from castlib.tasks import sample_examples


def answered(value, exercise):
    """``value``, or a friendly error while the exercise still holds its placeholder."""
    if value is None or value is Ellipsis:
        raise NotImplementedError(
            f"Exercise {exercise} is not done yet: replace the `...` in the exercise cell above "
            "with your code, run that cell, then run this check again."
        )
    return value


lm = castlib.load_model(model, device=device)

# %% [markdown]
# Three disjoint sets of examples: `xs` (the vector is built from them, with their labels),
# `dev` (labelled, held out: for choosing layer and alpha) and `test` (touched once, at the
# end).

# %%
task = castlib.load_task(task_name)
rng = random.Random(seed)
pool = rng.sample(list(task.train), n_train + n_dev)
xs, dev = pool[:n_train], pool[n_train:]
test = sample_examples(task.test, n_test, seed=seed)
print(task)
print(f"{len(xs)} examples for the vector, {len(dev)} dev, {len(test)} test")

# %% [markdown]
# ## Exercise 2.1: demonstrations without a leak
# For each x in `xs`, choose k demonstrations among the *other* examples of `xs` (seeded with
# `rng`). If x were among its own demonstrations, the few-shot prompt would contain x's answer
# and `delta(x)` would measure copying, not in-context learning.
#
# Write `pick_demos(xs, k, rng)`: a list with one entry per x, the list of its k
# demonstrations (Examples from `xs`, none of them x itself).


# %% tags=["exercise"]
def pick_demos(xs, k, rng):
    """For each x of ``xs``, ``k`` other examples of ``xs`` (seeded by ``rng``)."""
    ...  # your code: a list of len(xs) lists of k Examples (hint: rng.sample)


# %%
demos = answered(pick_demos(xs, k, random.Random(seed)), "2.1")
assert len(demos) == len(xs), (
    f"Exercise 2.1: one list of demonstrations per example: expected {len(xs)}, got {len(demos)}"
)
ids = {x.id for x in xs}
for x, d in zip(xs, demos, strict=True):
    assert len(d) == k, f"Exercise 2.1: {x.id} has {len(d)} demonstrations, expected k={k}"
    assert x.id not in {e.id for e in d}, (
        f"Exercise 2.1: {x.id} is among its own demonstrations: its answer would be in its "
        "prompt. Choose among the *other* examples."
    )
    assert {e.id for e in d} <= ids, (
        f"Exercise 2.1: the demonstrations of {x.id} must come from xs (the dev and test "
        "examples stay held out)"
    )
    assert len({e.id for e in d}) == k, f"Exercise 2.1: {x.id} has a repeated demonstration"
print("Exercise 2.1: correct")
zero_prompts = [castlib.zero_shot(task, x) for x in xs]
few_prompts = [castlib.k_shot(task, x, d) for x, d in zip(xs, demos, strict=True)]
print(few_prompts[0])

# %% [markdown]
# ## Exercise 2.2: the vector
# Record the zero-shot and the few-shot states at every layer with
# `castlib.record_activations(lm, prompts)` (`[n, n_layers, hidden]`), then set
# `deltas` (`[n, n_layers, hidden]`, few-shot minus zero-shot) and `v` (`[n_layers, hidden]`,
# their mean over the examples).

# %% tags=["exercise"]
h_zero = ...  # zero-shot states of zero_prompts, [n, n_layers, hidden]
h_few = ...  # few-shot states of few_prompts
deltas = ...  # few-shot minus zero-shot
v = ...  # the mean over the examples, [n_layers, hidden]

# %%
answered(v, "2.2")
shape = (len(xs), lm.n_layers, lm.hidden_size)
assert torch.is_tensor(deltas) and tuple(deltas.shape) == shape, (
    f"Exercise 2.2: deltas must be a tensor of shape {shape}, got {getattr(deltas, 'shape', deltas)}"
)
check = castlib.record_activations(lm, [few_prompts[0], zero_prompts[0]])  # one example again
assert torch.allclose(deltas[0], check[0] - check[1], atol=1e-3, rtol=1e-3), (
    "Exercise 2.2: deltas[0] is not h(few-shot prompt 0) - h(zero-shot prompt 0): few-shot "
    "minus zero-shot, in that order, for the prompts above"
)
assert tuple(v.shape) == shape[1:] and torch.allclose(v, deltas.mean(0), atol=1e-5), (
    f"Exercise 2.2: v is the mean of deltas over the examples (dim 0), shape {shape[1:]}"
)
print("Exercise 2.2: correct")
vector = castlib.SteeringVector.from_tensor(v, model_id=lm.name, n_layers=lm.n_layers)
norms = pd.DataFrame({"layer": range(lm.n_layers), "norm of v_l": v.norm(dim=1).double().numpy()})
fig = plots.lines(
    norms, x="layer", y="norm of v_l", title=f"{task_name}: size of the ICL enhancement"
)
norms.set_index("layer").T.round(1)

# %% [markdown]
# ## Exercise 2.3: choose (layer, alpha) on dev, then steer the test split once
# `castlib.steer(lm, vector, alpha=a, layers=[l])` is a context manager: inside it, every
# forward pass adds `a * v_l` to the output of block l at the last prompt token; on exit the
# hook is removed. `castlib.evaluate(lm, task, examples=...)` scores examples by the
# log-probability of each label.
#
# Fill `dev_table` (a DataFrame with columns `layer`, `alpha`, `accuracy`: one row per pair of
# `layer_grid` x `alpha_grid`, accuracy on `dev`) and set `best_layer`, `best_alpha` to the
# pair with the highest dev accuracy. (`castlib.evaluate_sweep` scores a whole grid in one
# pass; a plain loop over `castlib.steer` + `castlib.evaluate` is as good.)

# %% tags=["exercise"]
dev_table = ...  # a DataFrame: columns layer, alpha, accuracy (on dev)
best_layer = ...  # the layer of the best row
best_alpha = ...  # the alpha of the best row

# %%
answered(dev_table, "2.3")
answered(best_layer, "2.3")
assert isinstance(dev_table, pd.DataFrame) and {"layer", "alpha", "accuracy"} <= set(
    dev_table.columns
), "Exercise 2.3: dev_table must be a DataFrame with columns layer, alpha, accuracy"
assert len(dev_table) == len(layer_grid) * len(alpha_grid), (
    f"Exercise 2.3: one row per (layer, alpha) pair: expected "
    f"{len(layer_grid) * len(alpha_grid)}, got {len(dev_table)}"
)
assert (
    dev_table["accuracy"].max()
    == dev_table.query("layer == @best_layer and alpha == @best_alpha")["accuracy"].max()
), "Exercise 2.3: (best_layer, best_alpha) is not the best row of dev_table"
mine = dev_table.query("layer == @best_layer and alpha == @best_alpha")["accuracy"].iloc[0]
with castlib.steer(lm, vector, alpha=best_alpha, layers=[best_layer]):
    again = castlib.evaluate(lm, task, examples=dev)  # recomputed here
assert not lm.interventions, (
    "Exercise 2.3: a steering hook is still active; use `with castlib.steer(...):` so that "
    "it is removed on exit"
)
assert abs(mine - again.accuracy) <= 1 / len(dev), (
    f"Exercise 2.3: at layer {best_layer}, alpha {best_alpha} the dev accuracy is "
    f"{again.accuracy:.3f}, your table says {mine:.3f}: steer with `vector` at that layer and "
    "scale and evaluate on `dev` (not on test)"
)
assert not {e.id for e in dev} & {e.id for e in test}, "dev and test overlap"
print("Exercise 2.3: correct")
dev_table

# %% [markdown]
# The test split, touched once: zero-shot, then steered with the chosen pair.

# %%
zero = castlib.evaluate(lm, task, examples=test)
with castlib.steer(lm, vector, alpha=best_alpha, layers=[best_layer]):
    steered = castlib.evaluate(lm, task, examples=test)
few = castlib.evaluate(
    lm, task, examples=test, prompt=lambda t, x: castlib.k_shot(t, x, xs[:k])
)  # a reference that puts k labelled demonstrations in every prompt
summary = pd.DataFrame(
    [
        {
            "method": "zero-shot",
            "accuracy": zero.accuracy,
            "prompt tokens": zero.prompt_tokens_per_query,
        },
        {
            "method": f"steered (layer {best_layer}, alpha {best_alpha})",
            "accuracy": steered.accuracy,
            "prompt tokens": steered.prompt_tokens_per_query,
        },
        {
            "method": f"{k}-shot prompt",
            "accuracy": few.accuracy,
            "prompt tokens": few.prompt_tokens_per_query,
        },
    ]
)
summary.round(3)

# %% [markdown]
# **What to take away.** The vector carries part of what the demonstrations do, at the cost of
# a zero-shot prompt (compare the prompt tokens). Whether steering helps on `n_test` examples is
# a measurement with a wide interval at this size: 32 test rows resolve differences of about
# 0.15 at best. The layer and the scale were chosen on dev examples; choosing them on the test
# split would report the best of several tries as if it were one. Tutorial 3 builds the vector
# from *another* task.
