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
# **Where the course is going.** CAST has two steps (tutorial 3 puts them together): it
# *selects* source samples that are influential for the target task and diverse, then builds a
# *contrastive* steering vector from them, the few-shot state minus the zero-shot state, and
# adds it to the target's zero-shot run. Both steps read the residual stream this notebook is
# about.
#
# ![CAST in two steps: selection of influential and diverse source samples, then the contrastive steering vector added to the target's zero-shot run](figures/cast_two_steps.png)
#
# **How to work.** Each exercise cell (tagged `exercise`) is followed by a check cell: run it,
# and it tells you what is wrong or prints `correct`. Each exercise gives an estimate of your
# time, hints that stay folded until you open them, and a link to its solution. Your time:
# about 45 minutes; the cells run in about a minute of CPU time (the embedded Gemma 3 270M, 18
# blocks). This notebook comes twice:
# [the exercise version](01_residual_stream.ipynb) to do and
# [the solutions version](solutions/01_residual_stream.ipynb), done and executed.

# %% tags=["parameters"]
model = "gemma-3-270m"  # the embedded Gemma 3 270M (no download), or any Hugging Face causal LM
device = "cpu"
tasks = ["sst2", "ag_news", "arc_easy"]  # tasks compared in exercise 1.3
n_per_task = 12  # zero-shot prompts recorded per task

# %% [markdown]
# ### Setup
# Imports, the helpers the check cells use (`castlib.tutorial_checks`) and the model. Nothing
# to change here: run it once.

# %% tags=["nbval-ignore-output"]
import warnings

from tqdm import TqdmWarning

# before castlib imports tqdm.auto, which warns when ipywidgets is missing
warnings.filterwarnings("ignore", category=TqdmWarning)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import castlib
from castlib.analysis import cosine_matrix
from castlib.padding import last_token_index
from castlib.tutorial_checks import attempt, clear_hooks

lm = castlib.load_model(model, device=device)
print(f"{lm.name}: {lm.n_layers} decoder blocks, hidden size {lm.hidden_size}")

# %% [markdown]
# ## Exercise 1.1: the last real token
# *About 10 minutes.* This exercise: [to do](01_residual_stream.ipynb#Exercise-1.1:-the-last-real-token) ·
# [solved](solutions/01_residual_stream.ipynb#Exercise-1.1:-the-last-real-token)
#
# Prompts in a batch have different lengths, so the shorter ones are padded. The attention
# mask says which tokens are real (1) and which are padding (0). With *right* padding the
# padding comes after the prompt; with *left* padding, before it. Position `-1` is the last
# real token only for the longest prompt under right padding (and for every prompt under left
# padding): reading position `-1` blindly reads padding.
#
# Write `last_real_token(mask)`: for a `[batch, seq]` mask, the index of the last 1 in each
# row, for either padding side.
#
# <details><summary>Hint</summary>
#
# Multiply the mask by the positions `torch.arange(seq)`: padding becomes 0 and every real token
# keeps its position. In each row, where is the largest value?
# </details>
#
# <details><summary>Second hint</summary>
#
# `(positions * mask).argmax(dim=1)` is the last real position under either padding side. A
# `flip` along the sequence and an `argmax` of the first 1 work as well (then convert back:
# `seq - 1 - index`).
# </details>


# %% tags=["exercise"]
def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row: a LongTensor of shape ``[batch]``."""
    ...  # your code


# %%
masks = {
    "right padding": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
    "left padding": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
}
for name, mask in masks.items():
    got = attempt("1.1", last_real_token, mask, on=f"the {name} mask {mask.tolist()}")
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
# ## Exercise 1.2: record block outputs with a forward hook
# *About 15 minutes.* This exercise: [to do](01_residual_stream.ipynb#Exercise-1.2:-record-block-outputs-with-a-forward-hook) ·
# [solved](solutions/01_residual_stream.ipynb#Exercise-1.2:-record-block-outputs-with-a-forward-hook)
#
# `module.register_forward_hook(fn)` makes PyTorch call `fn(module, args, output)` after every
# forward pass of `module`; it returns a handle whose `remove()` takes the hook off again. A
# hook that is never removed keeps running on every later forward pass, so remove it in a
# `finally:` block (it then goes even when the forward pass fails). The check removes any hook
# that an earlier attempt left on the blocks before it calls your function, and says so, so
# that a corrected attempt passes without restarting the kernel.
#
# Complete `record_block(lm, prompts, layer)`: register `hook` on `lm.blocks[layer]`, run
# `lm.model(**batch)` under `torch.no_grad()`, remove the hook, and return the captured hidden
# state at each row's last real token (your `last_real_token`), as float32 of shape
# `[len(prompts), hidden]`. The batch is right-padded, so the real tokens keep their
# positions 0, 1, 2, ...
#
# <details><summary>Hint</summary>
#
# `handle = lm.blocks[layer].register_forward_hook(hook)`, then the forward pass inside
# `try:`, and `handle.remove()` inside `finally:`.
# </details>
#
# <details><summary>Second hint</summary>
#
# `captured["hidden"]` is `[batch, seq, hidden]`. Pick one position per row by indexing with
# two tensors of the same length: the rows `torch.arange(len(prompts))` and the positions
# `last_real_token(batch["attention_mask"])`.
# </details>


# %% tags=["exercise"]
def record_block(lm, prompts: list[str], layer: int) -> torch.Tensor:
    """h_layer at the last real token of each prompt, ``[len(prompts), hidden]`` float32."""
    batch = lm.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
    captured = {}

    def hook(module, args, output):
        # a block returns a tensor or a tuple whose first item is the hidden state
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    # your code: register `hook` on lm.blocks[layer] (keep the handle it returns) ...
    with torch.no_grad():
        lm.model(**batch)
    # ... and remove it again, also when the forward pass fails (try/finally); then return
    # captured["hidden"] at each row's last real token (your last_real_token of
    # batch["attention_mask"]) as float32, shape [len(prompts), hidden]
    return ...


# %%
sst2 = castlib.load_task("sst2")
prompts = [castlib.zero_shot(sst2, x) for x in sst2.train[:4]]  # four lengths: padding
layer = lm.n_layers // 2
earlier = clear_hooks(lm)  # hooks an earlier attempt left behind
if earlier:
    print(f"(removed {earlier} hook(s) that an earlier attempt left on the blocks)")
mine = attempt(
    "1.2", record_block, lm, prompts, layer, on=f"the {len(prompts)} sst2 prompts, layer={layer}"
)
left = clear_hooks(lm)
assert not left, (
    f"Exercise 1.2: your record_block left {left} hook(s) registered on the blocks (this check "
    "has removed them, so your next attempt starts clean). Keep the handle that "
    "register_forward_hook returns and call handle.remove() in a `finally:` block."
)
reference = castlib.record_activations(lm, prompts, layers=[layer])[:, 0]
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
# *About 20 minutes.* This exercise: [to do](01_residual_stream.ipynb#Exercise-1.3:-compare-tasks) ·
# [solved](solutions/01_residual_stream.ipynb#Exercise-1.3:-compare-tasks)
#
# We record the zero-shot states of a few prompts of each task at every layer
# (`castlib.record_activations`: `[n_prompts, n_layers, hidden]`).
#
# Raw states share a large common component (every prompt ends with `Answer:`), so every
# cosine is close to 1. Subtract the mean state of all recorded prompts (pooled over the
# tasks) first. Write `task_similarity(acts, layer)`: a task x task table whose entry (a, b)
# is the mean cosine between the centred states of prompts of task a and prompts of task b at
# `layer`; on the diagonal, average over pairs of *different* prompts only (a prompt's cosine
# with itself is always 1).
#
# <details><summary>Hint</summary>
#
# Take every task's states at `layer` (`a[:, layer]`), subtract the mean of all of them
# together (`torch.cat(...).mean(0)`), and normalise each row
# (`torch.nn.functional.normalize(x, dim=1)`): the cosine of two unit rows is their dot product.
# </details>
#
# <details><summary>Second hint</summary>
#
# For tasks a and b, `unit_a @ unit_b.T` holds every pairwise cosine, and its mean is the entry
# (a, b). For a == b, subtract the diagonal (the n self-pairs, each 1) from the sum and divide
# by the n (n - 1) remaining pairs.
# </details>

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
    ...  # your code: a DataFrame whose index and columns are the task names


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
    got = attempt("1.3", task_similarity, acts, check_layer, on=f"acts, layer={check_layer}")
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
# layer by layer: where do prompts of one task cluster most clearly? The dashed line is what
# centring alone predicts for the between-task cosine (explained below the table).

# %%
n_tasks = len(tasks)
off_diagonal = ~np.eye(n_tasks, dtype=bool)
sizes = np.array([acts[name].shape[0] for name in tasks])
rows = []
for block in range(lm.n_layers):
    table = task_similarity(acts, block).loc[tasks, tasks].to_numpy(dtype=float)
    within = table.diagonal()
    # |mean unit vector of task a|^2 from its within-task cosine (n self-pairs of cosine 1)
    squared = (1 + (sizes - 1) * within) / sizes
    rows.append(
        {
            "layer": block,
            "same task": within.mean(),
            "different tasks": table[off_diagonal].mean(),
            "different tasks, centring alone": -squared.sum() / (n_tasks * (n_tasks - 1)),
        }
    )
by_layer = pd.DataFrame(rows).set_index("layer")
fig, ax = plt.subplots(figsize=(6.5, 4.0))
for column, style in zip(by_layer.columns, ("o-", "o-", "k--"), strict=True):
    ax.plot(by_layer.index, by_layer[column], style, label=column)
ax.axhline(0.0, color="0.6", linewidth=0.8)
ax.set_xticks(range(lm.n_layers))
ax.set(xlabel="layer", ylabel="mean cosine of centred states")
ax.set_title("Centred zero-shot states: within vs between tasks")
ax.legend(frameon=False)
fig.tight_layout()
by_layer.round(2).T

# %% [markdown]
# **Why the between-task cosines are negative.** Centring subtracts the mean of all recorded
# states, so the centred states sum to zero, and so (nearly) do the tasks' mean directions
# `u_a` (the mean of task a's unit-length centred states). For k vectors that sum to zero,
# `sum over a != b of <u_a, u_b> = -sum over a of |u_a|^2`: the between-task cosines must be
# negative on average, whatever the tasks are. If every prompt of a task had the same state
# (`|u_a| = 1`), the mean would be exactly `-1/(k-1)`; prompts of a task spread, so `|u_a|^2 =
# (1 + (n-1) w_a) / n` from the within-task cosine `w_a` (the diagonal of the table), which
# gives the dashed line. The numbers of this run:

# %%
middle = lm.n_layers // 2
display(
    Markdown(
        f"At layer {middle}, the measured mean between-task cosine is "
        f"{by_layer.loc[middle, 'different tasks']:.3f}; centring alone predicts "
        f"{by_layer.loc[middle, 'different tasks, centring alone']:.3f} from the within-task "
        f"cosines, and {-1 / (n_tasks - 1):.3f} (= -1/(k-1) for k = {n_tasks} tasks) if each "
        "task's prompts coincided. Across layers the measured value is within "
        f"{(by_layer['different tasks'] - by_layer['different tasks, centring alone']).abs().max():.3f}"
        " of the centring prediction: the negative sign says nothing about tasks opposing "
        "each other. What carries information is the diagonal: the same-task cosine is above "
        f"the between-task cosine at {int((by_layer['same task'] > by_layer['different tasks']).sum())}"
        f" of {lm.n_layers} layers, highest at layer {int(by_layer['same task'].idxmax())} "
        f"({by_layer['same task'].max():.3f})."
    )
)

# %% [markdown]
# **What to take away.** The residual stream at the last real token is where the model keeps
# what it needs for the answer; castlib reads it at block outputs through hooks, at the last
# real token found from the attention mask. Prompts of one task are closer to each other than
# to other tasks' prompts at most layers: the stream carries the task. Between-task cosines
# after centring are negative by construction; compare them with the centring prediction,
# never with 0. Tutorial 2 uses the *difference* that in-context examples make to this state.
