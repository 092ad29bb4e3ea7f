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
# # Tutorial 1: reading the residual stream
#
# A decoder-only language model is a stack of blocks; block l adds its update to a running
# vector per token, the *residual stream*. CAST reads (and later writes) the output of block l,
# `h_l`, at the **last real token** of a prompt: the state from which the model predicts the
# answer. In this notebook you
#
# 1. find the last real token of each row of a padded batch from its attention mask,
# 2. record `h_l` yourself with a PyTorch forward hook, and check it against
#    `castlib.record_activations`,
# 3. compare tasks: are prompts of the same task closer to each other than to other tasks, and
#    at which layers?
#
# Each exercise cell (tagged `exercise`) is followed by a check cell: run it, and it tells you
# what is wrong or prints `correct`. Time: about a minute of CPU time (the
# embedded Gemma 3 270M, 18 blocks). This notebook comes twice: `notebooks/tutorial/` has the
# exercises to do, `notebooks/tutorial/solutions/` has them done.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M (no download), or any Hugging Face causal LM
device = "cpu"
tasks = ["sst2", "ag_news", "arc_easy"]  # tasks compared in exercise 1.3
n_per_task = 12  # zero-shot prompts recorded per task

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before castlib imports tqdm.auto, which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import pandas as pd
import torch

import castlib
from castlib.analysis import cosine_matrix
from castlib.padding import last_token_index
from castlib.repro import plots


def answered(value, exercise):
    """``value``, or a friendly error while the exercise still holds its placeholder."""
    if value is None or value is Ellipsis:
        raise NotImplementedError(
            f"Exercise {exercise} is not done yet: replace the `...` in the exercise cell above "
            "with your code, run that cell, then run this check again."
        )
    return value


lm = castlib.load_model(model, device=device)
print(f"{lm.name}: {lm.n_layers} decoder blocks, hidden size {lm.hidden_size}")

# %% [markdown]
# ## Exercise 1.1: the last real token
# Prompts in a batch have different lengths, so the shorter ones are padded. The attention
# mask says which tokens are real (1) and which are padding (0). With *right* padding the
# padding comes after the prompt; with *left* padding, before it. Position `-1` is the last
# real token only for the longest prompt under right padding (and for every prompt under left
# padding): reading position `-1` blindly reads padding.
#
# Write `last_real_token(mask)`: for a `[batch, seq]` mask, the index of the last 1 in each
# row, for either padding side. (Hint: `flip` and `argmax`, or `arange` times the mask.)


# %% tags=["exercise"]
def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: a LongTensor of shape ``[batch]``."""
    positions = torch.arange(attention_mask.shape[1])
    return (positions * attention_mask.long()).argmax(dim=1)


# %%
masks = {
    "right padding": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
    "left padding": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
}
for name, mask in masks.items():
    got = answered(last_real_token(mask), "1.1")
    want = last_token_index(mask)  # castlib's own
    assert torch.is_tensor(got) and got.shape == want.shape, (
        f"Exercise 1.1 ({name}): return one index per row, a tensor of shape "
        f"{tuple(want.shape)}; got {got!r}"
    )
    assert torch.equal(got.long(), want), (
        f"Exercise 1.1 ({name}): for the mask\n{mask}\nthe last real tokens are at "
        f"{want.tolist()}, you returned {got.tolist()}. Look for the last 1 of each row, "
        "wherever the padding is."
    )
print("Exercise 1.1: correct")

# %% [markdown]
# ## Exercise 1.2: record a block's output with a forward hook
# `module.register_forward_hook(fn)` makes PyTorch call `fn(module, args, output)` after every
# forward pass of `module`; it returns a handle whose `remove()` takes the hook off again. A
# hook that is never removed keeps running on every later forward pass, so remove it in a
# `finally:` block (it then goes even when the forward pass fails).
#
# Complete `record_block(lm, prompts, layer)`: register `hook` on `lm.blocks[layer]`, run
# `lm.model(**batch)` under `torch.no_grad()`, remove the hook, and return the captured hidden
# state at each row's last real token (your `last_real_token`), as float32 of shape
# `[len(prompts), hidden]`. The batch is right-padded, so the real tokens keep their
# positions 0, 1, 2, ...


# %% tags=["exercise"]
def record_block(lm, prompts: list[str], layer: int) -> torch.Tensor:
    """h_layer at the last real token of each prompt, ``[len(prompts), hidden]`` float32."""
    batch = lm.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
    captured = {}

    def hook(module, args, output):
        # a block returns a tensor or a tuple whose first item is the hidden state
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            lm.model(**batch)
    finally:
        handle.remove()
    rows = torch.arange(len(prompts))
    return captured["hidden"][rows, last_real_token(batch["attention_mask"])].float()


# %%
sst2 = castlib.load_task("sst2")
prompts = [castlib.zero_shot(sst2, x) for x in sst2.train[:4]]  # four lengths: padding
layer = lm.n_layers // 2
mine = answered(record_block(lm, prompts, layer), "1.2")
reference = castlib.record_activations(lm, prompts, layers=[layer])[:, 0]
assert not lm.blocks[layer]._forward_hooks, (
    "Exercise 1.2: a hook is still registered on the block; keep the handle that "
    "register_forward_hook returns and call handle.remove() in a `finally:` block"
)
assert torch.is_tensor(mine) and mine.shape == reference.shape, (
    f"Exercise 1.2: expected a tensor of shape {tuple(reference.shape)} (one row per prompt), "
    f"got {getattr(mine, 'shape', mine)!r}"
)
error = float((mine.float() - reference).abs().max() / reference.abs().max())
assert error < 1e-3, (
    f"Exercise 1.2: your states differ from castlib's by {error:.2g} (relative). Did you take "
    f"the output of block {layer} (not its input) at each row's last *real* token (not "
    "position -1, which is padding for the shorter prompts)?"
)
print("Exercise 1.2: correct")

# %% [markdown]
# What reading position `-1` would have given instead (relative error per prompt; 0 only
# for the longest prompt):

# %%
batch = lm.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
print("prompt lengths in tokens:", batch["attention_mask"].sum(1).tolist())
with torch.no_grad():
    out = lm.model(**batch, output_hidden_states=True)
# hidden_states[l + 1] is the output of block l, except the last entry, which most families
# take after the final norm: one reason castlib reads blocks through hooks
at_minus_one = out.hidden_states[layer + 1][:, -1].float()
((at_minus_one - reference).norm(dim=1) / reference.norm(dim=1)).round(decimals=3)

# %% [markdown]
# ## Exercise 1.3: compare tasks
# We record the zero-shot states of a few prompts of each task at every layer
# (`castlib.record_activations`: `[n_prompts, n_layers, hidden]`).
#
# Raw states share a large common component (every prompt ends with `Answer:`), so every
# cosine is close to 1. Subtract the mean state of all recorded prompts (pooled over the
# tasks) first. Write `task_similarity(acts, layer)`: a task x task table whose entry (a, b)
# is the mean cosine between the centred states of prompts of task a and prompts of task b at
# `layer`; on the diagonal, average over pairs of *different* prompts only (a prompt's cosine
# with itself is always 1).

# %%
loaded = {name: castlib.load_task(name) for name in tasks}
acts = {
    name: castlib.record_activations(
        lm, [castlib.zero_shot(task, x) for x in task.train[:n_per_task]]
    )
    for name, task in loaded.items()
}
{name: tuple(a.shape) for name, a in acts.items()}


# %% tags=["exercise"]
def task_similarity(acts: dict[str, torch.Tensor], layer: int):
    """Mean cosine of centred states between (and within) tasks at ``layer``: a DataFrame."""
    states = {name: a[:, layer] for name, a in acts.items()}
    centre = torch.cat(list(states.values())).mean(0)
    unit = {name: torch.nn.functional.normalize(s - centre, dim=1) for name, s in states.items()}
    names = list(unit)
    table = pd.DataFrame(index=names, columns=names, dtype=float)
    for a in names:
        for b in names:
            cos = unit[a] @ unit[b].T
            if a == b:
                n = cos.shape[0]
                table.loc[a, b] = float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))
            else:
                table.loc[a, b] = float(cos.mean())
    return table


# %%
def reference_similarity(acts, layer):
    rows = {(name, i): a[i, layer] for name, a in acts.items() for i in range(a.shape[0])}
    centre = torch.stack(list(rows.values())).mean(0)
    cos = cosine_matrix({key: v - centre for key, v in rows.items()})
    task_of = [name for name, _ in rows]
    cos.index, cos.columns = task_of, task_of
    values = cos.to_numpy().copy()
    values[range(len(values)), range(len(values))] = float("nan")  # drop self-pairs
    cos[:] = values
    return cos.T.groupby(level=0, sort=False).mean().T.groupby(level=0, sort=False).mean()


for check_layer in (1, lm.n_layers // 2, lm.n_layers - 1):
    got = answered(task_similarity(acts, check_layer), "1.3")
    want = reference_similarity(acts, check_layer)
    assert hasattr(got, "loc") and set(got.index) == set(tasks) == set(got.columns), (
        f"Exercise 1.3: return a pandas DataFrame with the tasks {tasks} as index and "
        f"columns; got {type(got).__name__}"
    )
    got = got.loc[want.index, want.columns].astype(float)
    assert (got - want).abs().to_numpy().max() < 1e-4, (
        f"Exercise 1.3 (layer {check_layer}): expected\n{want.round(3)}\ngot\n{got.round(3)}\n"
        "Centre on the mean of *all* recorded states (every task pooled), normalise each "
        "centred state, and leave out each prompt's cosine with itself on the diagonal."
    )
print("Exercise 1.3: correct")

# %% [markdown]
# Within-task similarity (the diagonal) against between-task similarity (off the diagonal),
# layer by layer: where do prompts of one task cluster most clearly?

# %%
rows = []
for block in range(lm.n_layers):
    table = task_similarity(acts, block).to_numpy()
    off = ~torch.eye(len(tasks), dtype=torch.bool).numpy()
    rows.append({"layer": block, "pair": "same task", "cosine": table.diagonal().mean()})
    rows.append({"layer": block, "pair": "different tasks", "cosine": table[off].mean()})
by_layer = pd.DataFrame(rows)
fig = plots.lines(
    by_layer,
    x="layer",
    y="cosine",
    hue="pair",
    title="Centred zero-shot states: mean cosine within vs between tasks",
)
by_layer.pivot(index="layer", columns="pair", values="cosine").round(2).T

# %% [markdown]
# **What to take away.** The residual stream at the last real token is where the model keeps
# what it needs for the answer; castlib reads it at block outputs through hooks, at the last
# real token found from the attention mask. Prompts of one task are closer to each other than
# to other tasks' prompts at most layers: the stream carries the task. Tutorial 2 uses the
# *difference* that in-context examples make to this state.
