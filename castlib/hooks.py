"""Forward-hook plumbing shared by recording and steering.

The site castlib reads and writes is the output of a decoder block, h_l. Depending on the
family and the transformers version a block returns a tensor or a tuple whose first item is
the hidden state; `hidden_of` and `with_hidden` hide that difference. `HookGroup` registers
hooks and removes every one of them on exit, also after an exception.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["hidden_of", "with_hidden", "HookGroup", "StopForward", "ForwardInfo", "watch_inputs"]


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor ``[batch, seq, hidden]`` of a block's output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The block output with its hidden state replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"unexpected decoder block output type {type(output).__name__}")


class StopForward(Exception):
    """Raised by a hook to stop a forward pass early (nothing after it runs)."""


@dataclass
class HookGroup:
    """A set of hook handles removed together; usable as a context manager."""

    handles: list[RemovableHandle] = field(default_factory=list)

    def add(self, handle: RemovableHandle) -> None:
        self.handles.append(handle)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class ForwardInfo:
    """What the backbone was called with, for the hooks of its blocks to read.

    attention_mask: the mask columns of the tokens of this call (``[batch, new_tokens]``),
        or None when the caller passed no mask.
    past_length: how many cached tokens precede them (0 for a prompt; > 0 for decode steps).
    """

    attention_mask: torch.Tensor | None = None
    past_length: int = 0
    #: True between the backbone's pre-hook and its forward hook: the fields describe the
    #: forward pass in progress.
    active: bool = False


def _bind(forward: Callable[..., Any]) -> Callable[[tuple, dict], dict[str, Any]]:
    sig = inspect.signature(forward)

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        try:
            return dict(sig.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            return dict(kwargs)

    return bind


def watch_inputs(backbone: nn.Module, info: ForwardInfo) -> list[RemovableHandle]:
    """Hooks on the backbone that fill ``info`` before each forward pass and mark it stale
    after; returns both handles."""
    bind = _bind(backbone.forward)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        arguments = bind(args, kwargs)
        mask = arguments.get("attention_mask")
        ids = arguments.get("input_ids")
        embeds = arguments.get("inputs_embeds")
        new = None
        if isinstance(ids, torch.Tensor):
            new = ids.shape[-1]
        elif isinstance(embeds, torch.Tensor):
            new = embeds.shape[1]
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and new is not None:
            info.past_length = mask.shape[1] - new
            info.attention_mask = mask[:, mask.shape[1] - new :]
        else:
            info.attention_mask = None
            past = arguments.get("cache", arguments.get("past_key_values"))
            length = getattr(past, "get_seq_length", None)
            info.past_length = int(length()) if callable(length) else 0
        info.active = True

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        info.active = False

    return [
        backbone.register_forward_pre_hook(pre_hook, with_kwargs=True),
        backbone.register_forward_hook(post_hook),
    ]
