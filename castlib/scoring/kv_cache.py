"""Key/value caches of transformers models: passing, copying and merging them.

The cached scorers (`castlib.scoring.prefix_cache`, `castlib.scoring.last_token`) and the
function-vector head patching (`castlib.methods.function_vector`) run a prefix once and continue
it many times. Every continuation runs on a *copy* of the stored cache whose layers share the
stored key/value tensors: the model's in-place ``update`` (a ``torch.cat`` that rebinds the
copy's tensors) then leaves the stored cache untouched.

    expand_cache(cache, n)       batch 1 -> batch n (``expand`` views, no copy)
    fork_cache(cache)            same batch, a fresh set of layers
    merge_caches(caches, masks)  consecutive batches -> one left-padded batch

Only transformers' dynamic layers (``DynamicLayer``, ``DynamicSlidingWindowLayer``) are copied
this way; other cache types fall back to ``copy.deepcopy`` (and
``Cache.batch_repeat_interleave``, transformers 5.x), and `merge_caches` refuses them.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from ..models import LanguageModel

__all__ = [
    "cache_kwargs",
    "returned_cache",
    "new_cache",
    "expand_cache",
    "fork_cache",
    "merge_caches",
    "mergeable",
]


def cache_kwargs(lm: LanguageModel, cache: object) -> dict[str, object]:
    """The keyword that passes a key/value cache to ``lm.model``: ``cache`` where the model's
    forward takes it (transformers >= 5.2x, where ``past_key_values`` is deprecated), else
    ``past_key_values``."""
    params = inspect.signature(lm.model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def returned_cache(output: object) -> object:
    """The key/value cache a forward pass returned (``output.cache``, else the older
    ``output.past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def new_cache(lm: LanguageModel) -> object:
    """An empty dynamic cache for ``lm`` (with its layer types where the config gives them)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=lm.model.config)
    except Exception:  # pragma: no cover - configs without layer types
        return DynamicCache()


def _dynamic_layers(cache: object) -> list[object] | None:
    """The cache's layers when every one is a transformers dynamic (sliding) layer, else None."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if layers is None or any(
        type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers
    ):
        return None
    return list(layers)


def expand_cache(cache: object, n: int) -> object:
    """A batch-``n`` copy of a batch-1 cache that shares the stored tensors (``expand`` views).

    Running the model on the copy never changes ``cache``.
    """
    layers = _dynamic_layers(cache)
    if layers is None:
        # generic path (other cache layer types): a deep copy, repeated along the batch dim
        out = copy.deepcopy(cache)
        if n != 1:
            out.batch_repeat_interleave(n)
        return out
    out = copy.copy(cache)
    new_layers = []
    for layer in layers:
        clone = copy.copy(layer)
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.numel() > 0:
            if keys.shape[0] != 1:
                raise ValueError(f"expand_cache expects a batch-1 cache, got batch {keys.shape[0]}")
            clone.keys = keys.expand(n, *keys.shape[1:])
            clone.values = layer.values.expand(n, *layer.values.shape[1:])
        new_layers.append(clone)
    out.layers = new_layers
    return out


def fork_cache(cache: object) -> object:
    """A copy of a transformers cache whose layers share the stored tensors.

    A forward pass on the copy appends to the copy's layers (``torch.cat`` rebinds them), so
    ``cache`` itself is never changed and can be reused for the next configuration.
    """
    layers = _dynamic_layers(cache)
    if layers is None:
        return copy.deepcopy(cache)
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in layers]
    return out


def mergeable(cache: object) -> bool:
    """Whether `merge_caches` takes ``cache``: dynamic (sliding) layers, all initialised."""
    layers = _dynamic_layers(cache)
    return layers is not None and all(layer.is_initialized for layer in layers)


def merge_caches(
    caches: Sequence[object], masks: Sequence[torch.Tensor]
) -> tuple[object, torch.Tensor]:
    """One left-padded prefix cache (and its mask) from the caches of consecutive batches.

    Each batch b holds ``T_b`` prefix columns (a sliding-window layer of window w only its last
    ``min(T_b, w - 1)``). The merged cache has ``T = max T_b`` columns (``min(T, w - 1)`` for
    sliding layers): every batch's keys and values are left-padded with zeros and concatenated
    along the batch axis, and its mask with zeros, which is what a batch padded to ``T`` holds
    in every column that attention does not mask out. Caches whose layers are not transformers'
    dynamic (sliding) layers are refused with ``TypeError``.
    """
    if not caches or len(caches) != len(masks):
        raise ValueError("merge_caches needs one mask per cache, and at least one cache")
    if not all(mergeable(c) for c in caches):
        raise TypeError("only caches of DynamicLayer / DynamicSlidingWindowLayer can be merged")
    if len(caches) == 1:
        return caches[0], masks[0]
    width = max(int(m.shape[1]) for m in masks)
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in masks])
    out = copy.copy(caches[0])
    out.layers = []
    for parts in zip(*(c.layers for c in caches), strict=True):
        layer = copy.copy(parts[0])
        sliding = getattr(layer, "is_sliding", False)
        cols = min(width, layer.sliding_window - 1) if sliding else width

        def padded(t: torch.Tensor, cols: int = cols) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, 0, cols - t.shape[-2], 0))

        layer.keys = torch.cat([padded(p.keys) for p in parts])
        layer.values = torch.cat([padded(p.values) for p in parts])
        if sliding:
            layer.cumulative_length = width
        out.layers.append(layer)
    return out, mask
