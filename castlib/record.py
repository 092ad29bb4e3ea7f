"""Reading the residual stream: block outputs at the last real token of each prompt.

``record_activations(lm, prompts, layers)[i, j] = h_{layers[j]}(prompts[i])``, the output of
decoder block ``layers[j]`` at the last non-padding token of prompt i, as float32.

Prompts are tokenised once, sorted by length and batched (left padding, position ids from the
attention mask). The forward pass runs the backbone only (never the LM head) and stops right
after the deepest requested block, so recording costs at most one plain forward pass.

With an `castlib.activation_store.ActivationStore` (``store=``, else the model's own
``lm.activation_store``), rows already recorded for the same model weights and dtype, layers,
padding side, pad token and prompt token ids are reused and only the others run. While
anything is hooked into the model (a `castlib.steer` context, any forward hook or pre-hook on
any submodule: `castlib.steer.installed_hooks`) the store is bypassed: its key cannot describe
what a hook does, so every row is recorded.

A non-finite recorded value (an overflowing steering scale, see `castlib.steer`) raises
`FloatingPointError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .activation_store import ActivationStore
from .hooks import HookGroup, StopForward, hidden_of
from .models import LanguageModel
from .padding import encode, iter_batches, last_token_index
from .progress import shown
from .steer import installed_hooks
from .validate import (
    check_positive_int,
    check_prompt_sizes,
    check_prompts,
    check_token_lengths,
)

__all__ = ["record_activations", "record_token_ids", "Recording"]


@dataclass(frozen=True, eq=False)
class Recording:
    """The ``lm.interventions`` entry of a running `record_activations` (its read hooks)."""

    layers: tuple[int, ...]
    kind: str = "record"


@contextmanager
def _listed(lm: LanguageModel, entry: object) -> Iterator[None]:
    lm.interventions.append(entry)
    try:
        yield
    finally:
        lm.interventions.remove(entry)


def record_token_ids(
    lm: LanguageModel,
    token_ids: Sequence[Sequence[int]],
    layers: Sequence[int] | int | None = None,
    batch_size: int = 16,
    padding_side: str = "left",
    progress: bool | None = None,
    desc: str = "recording",
) -> torch.Tensor:
    """`record_activations` for already tokenised prompts."""
    if len(token_ids) == 0:
        raise ValueError("empty prompt list")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_token_lengths([len(row) for row in token_ids], lm.context_length, lm.name)
    wanted = lm.check_layers(layers)
    deepest = wanted[-1]
    out = torch.empty((len(token_ids), len(wanted), lm.hidden_size), dtype=torch.float32)
    current: dict[str, object] = {}

    def make_hook(slot: int, layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            hidden = hidden_of(output)
            # blocks may live on different devices (accelerate device_map / offload): index on
            # the activation's device, gather the result to CPU
            rows = current["rows"].to(hidden.device)
            last = current["last"].to(hidden.device)
            out[current["indices"], slot] = hidden[rows, last].float().cpu()
            if layer == deepest:
                raise StopForward

        return hook

    pad_id = lm.tokenizer.pad_token_id
    batches = iter_batches(token_ids, batch_size, pad_id, padding_side, lm.device)
    n_batches = -(-len(token_ids) // batch_size)
    show = shown(progress, n_batches)
    entry = Recording(layers=tuple(wanted))
    with HookGroup() as hooks, torch.inference_mode(), _listed(lm, entry):
        for slot, layer in enumerate(wanted):
            hooks.add(lm.blocks[layer].register_forward_hook(make_hook(slot, layer)))
        for batch in tqdm(batches, total=n_batches, desc=desc, disable=not show, leave=False):
            current["indices"] = torch.as_tensor(batch.indices)
            current["rows"] = torch.arange(len(batch.indices), device=lm.device)
            current["last"] = last_token_index(batch.attention_mask)
            try:
                lm.base(**batch.model_inputs(), use_cache=False)
            except StopForward:
                pass
            else:  # pragma: no cover - the deepest hook always fires
                raise RuntimeError("the forward pass did not reach the deepest requested block")
    return out


def record_activations(
    lm: LanguageModel,
    prompts: Sequence[str],
    layers: Sequence[int] | int | None = None,
    batch_size: int = 16,
    padding_side: str = "left",
    progress: bool | None = None,
    store: ActivationStore | None = None,
) -> torch.Tensor:
    """Block outputs at the last real token of each prompt.

    Args:
        lm: a loaded model (`castlib.load_model`).
        prompts: the prompts (a non-empty list of non-blank strings, each within the model's
            context, `LanguageModel.context_length`; refused otherwise).
        layers: block indices to read (default: all), in any order; the result follows the
            sorted order of the requested layers.
        batch_size: prompts per forward pass.
        padding_side: ``"left"`` or ``"right"``; results agree up to float rounding.
        progress: show a progress bar (default: when there are more than 4 batches).
        store: reuse rows recorded before (default: ``lm.activation_store``; None there too:
            record everything).

    Returns:
        float32 tensor ``[n_prompts, n_layers, hidden]`` on CPU.
    """
    prompts = check_prompts(prompts)
    check_prompt_sizes(lm.tokenizer, prompts, lm.context_length, lm.name)  # before encoding
    ids = encode(lm.tokenizer, prompts)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    store = store if store is not None else getattr(lm, "activation_store", None)
    if store is not None and (lm.interventions or installed_hooks(lm.model)):
        store = None  # a hook changes rows in ways no key describes: record them all
    weights = store.fingerprint(lm.model) if store is not None else None
    if store is None or weights is None:
        return _finite(lm, record_token_ids(lm, ids, layers, batch_size, padding_side, progress))
    wanted = lm.check_layers(layers)
    fingerprint = f"{weights}|{padding_side}|pad={lm.tokenizer.pad_token_id}"
    keys = [store.key(fingerprint, wanted, row) for row in ids]
    shape = (len(wanted), lm.hidden_size)
    out = torch.empty((len(prompts), *shape), dtype=torch.float32)
    todo: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        row = None if key in todo else store.get(key, shape)
        if row is None:
            todo.setdefault(key, []).append(i)
        else:
            out[i] = row
    if todo:
        firsts = [rows[0] for rows in todo.values()]
        fresh = _finite(
            lm,
            record_token_ids(
                lm, [ids[i] for i in firsts], wanted, batch_size, padding_side, progress
            ),
        )
        for (key, rows), row in zip(todo.items(), fresh, strict=True):
            store.put(key, row)
            out[rows] = row
    return out


def _finite(lm: LanguageModel, rows: torch.Tensor) -> torch.Tensor:
    """``rows``, or `FloatingPointError` naming the first prompt with a non-finite value."""
    bad = (~torch.isfinite(rows)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"{lm.name} recorded non-finite activations for prompts {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}: a steering scale too large for the dtype (see "
            f"castlib.steer) or a broken model"
        )
    return rows
