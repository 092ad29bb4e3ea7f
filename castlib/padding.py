"""Padding-aware token bookkeeping: small pure functions over attention masks.

A padded batch has an attention mask ``m[b, t]`` (1 = real token). Whatever the padding side,
the last real token of row b is the largest t with ``m[b, t] = 1``, and the position id of
token t is the number of real tokens before it, ``cumsum(m)[b, t] - 1`` (so left padding does
not shift rotary or learned positions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "last_token_index",
    "position_ids_from_mask",
    "Batch",
    "encode",
    "iter_batches",
]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding.

    ``idx[b] = T - 1 - argmax(flip(m[b]))``. A row with no real token raises.
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention mask must be [batch, seq], got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a row of the attention mask has no real token (empty prompt?)")
    seq = mask.shape[1]
    return seq - 1 - mask.flip(1).to(torch.int8).argmax(dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only: ``clamp(cumsum(m) - 1, min=0)``."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


@dataclass
class Batch:
    """One tokenised batch: which inputs it holds and the tensors to feed the model."""

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def position_ids(self) -> torch.Tensor:
        return position_ids_from_mask(self.attention_mask)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def encode(
    tokenizer: object, prompts: Sequence[str], add_special_tokens: bool = True
) -> list[list[int]]:
    """Token ids of each prompt (with the tokenizer's special tokens, e.g. BOS)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not a single string")
    if len(prompts) == 0:
        raise ValueError("empty prompt list")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is {type(p).__name__}, expected str")
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    for i, row in enumerate(ids):
        if len(row) == 0:
            raise ValueError(f"prompt {i} tokenises to nothing")
    return ids


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to one tensor; returns ``(input_ids, attention_mask)``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[b, sl] = torch.as_tensor(list(row), dtype=torch.long)
        mask[b, sl] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def iter_batches(
    token_ids: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    side: str = "left",
    device: torch.device | None = None,
    sort_by_length: bool = True,
) -> Iterator[Batch]:
    """Yield padded batches; with ``sort_by_length`` rows of similar length share a batch
    (less padding), and ``Batch.indices`` maps rows back to input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(token_ids)))
    if sort_by_length:
        order.sort(key=lambda i: -len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad([token_ids[i] for i in idx], pad_id, side, device)
        yield Batch(indices=idx, input_ids=ids, attention_mask=mask)
