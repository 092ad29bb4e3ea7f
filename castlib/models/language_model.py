"""The wrapper castlib works with: a causal LM, its tokenizer and its decoder blocks.

A `LanguageModel` holds the Hugging Face model, its tokenizer, the list of decoder blocks (the
modules whose outputs are the residual stream h_l, l = 0..L-1), the device and the dtype. Every
read and write of activations in castlib goes through forward hooks on these blocks, so the
block list is the single definition of "layer l". `find_blocks` locates them (the paths of
`castlib.architectures.BLOCK_PATHS`, or an explicit ``blocks_path``); `wrap_model` wraps a
loaded model (`castlib.models.loading.load_model` loads one).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..activation_store import ActivationStore
from ..architectures import BLOCK_PATHS

__all__ = ["LanguageModel", "find_blocks", "wrap_model", "input_device", "BLOCK_PATHS"]


@dataclass
class LanguageModel:
    """A causal LM with what castlib needs to read and steer its residual stream.

    Attributes:
        model: the Hugging Face causal LM (``...ForCausalLM``), in eval mode.
        tokenizer: its tokenizer; it always has a pad token.
        blocks: the decoder blocks, ``blocks[l]`` producing h_l.
        blocks_path: the attribute path the blocks were found at (e.g. ``"model.layers"``).
        name: the model id or path it was loaded from.
        device: where the weights live (for a model dispatched by accelerate with
            ``device_map``: where its inputs go, the input embeddings' device).
        dtype: the floating dtype of the weights.
        interventions: castlib's own record of what it currently has hooked into the model, in
            registration order: each active `castlib.steer.Steering` handle (``kind ==
            "steer"``) and each running `castlib.record_activations` (``kind == "record"``).
            Entries add themselves on entry and remove themselves on exit (also after an
            exception); castlib reads this list, never torch's private hook dicts.
    """

    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    blocks_path: str
    name: str
    device: torch.device
    dtype: torch.dtype
    #: reuse of recorded activations (`castlib.activation_store`); `load_model` gives every
    #: model one (memory, plus ``$CASTLIB_ACTIVATION_STORE`` on disk), `wrap_model` none.
    activation_store: ActivationStore | None = field(default=None, repr=False, compare=False)
    interventions: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks L."""
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        config = self.model.config
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        text_config = getattr(config, "text_config", None)
        if text_config is not None and isinstance(getattr(text_config, "hidden_size", None), int):
            return text_config.hidden_size
        raise AttributeError(f"cannot read the hidden size from {type(config).__name__}")

    @property
    def base(self) -> nn.Module:
        """The backbone without the LM head: the module that owns the decoder blocks and
        receives the attention mask (``model.model`` on Llama, ``model.model.decoder`` on OPT,
        ``model.transformer`` on GPT-2)."""
        if "." not in self.blocks_path:
            return self.model
        owner = _get_path(self.model, self.blocks_path.rsplit(".", 1)[0])
        if not isinstance(owner, nn.Module):  # pragma: no cover - find_blocks checked the path
            raise AttributeError(f"no module owns {self.blocks_path!r}")
        return owner

    def check_layers(self, layers: Sequence[int] | int | None) -> list[int]:
        """Validate layer indices (negative ones count from the end) and return them sorted."""
        if layers is None:
            return list(range(self.n_layers))
        if hasattr(layers, "ndim") and hasattr(layers, "tolist"):  # torch / numpy, 0-d too
            layers = layers.tolist()
        if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
            layers = [int(layers)]
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise TypeError(
                f"layers must be an int or a list of ints (0..{self.n_layers - 1}), got {layers!r}"
            )
        layers = list(layers)
        out = []
        for layer in layers:
            if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
                raise TypeError(f"layer indices must be int, got {layer!r} in layers={layers!r}")
            layer = int(layer)
            if not -self.n_layers <= layer < self.n_layers:
                raise IndexError(
                    f"layer {layer} out of range: {self.name} has {self.n_layers} decoder blocks "
                    f"(valid: 0..{self.n_layers - 1}, or negative from the end)"
                )
            out.append(layer % self.n_layers)
        if not out:
            raise ValueError("empty layer list")
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate layers in {list(layers)}")
        return sorted(out)

    @property
    def context_length(self) -> int | None:
        """The longest token sequence the model accepts (its position table or trained
        context: ``max_position_embeddings``, ``n_positions``, ``n_ctx``, ``max_seq_len``;
        the smallest one set), or None when the config names none."""
        configs = [self.model.config]
        text_config = getattr(self.model.config, "text_config", None)
        if text_config is not None:
            configs.append(text_config)
        found = []
        for config in configs:
            for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
                value = getattr(config, key, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    found.append(value)
        return min(found) if found else None

    def __repr__(self) -> str:
        return (
            f"LanguageModel(name={self.name!r}, layers={self.n_layers}, hidden={self.hidden_size}, "
            f"device={self.device}, dtype={self.dtype}, blocks={self.blocks_path!r})"
        )


def _get_path(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return the decoder blocks of ``model`` and the attribute path they were found at.

    ``blocks_path`` overrides the search (e.g. ``"model.layers"``). Without it, the paths of
    `BLOCK_PATHS` (from `castlib.architectures`) are tried in order and the first
    ``nn.ModuleList`` wins.
    """
    if blocks_path is not None:
        found = _get_path(model, blocks_path)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise ValueError(
                f"blocks_path={blocks_path!r} does not name a non-empty nn.ModuleList on "
                f"{type(model).__name__}"
            )
        return found, blocks_path
    for path in BLOCK_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found, path
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: none of {list(BLOCK_PATHS)} "
        f"exists. Pass the attribute path explicitly, e.g. "
        f"load_model(..., blocks_path={lists[0] if lists else 'model.layers'!r}) or "
        f"wrap_model(model, tokenizer, blocks_path=...). ModuleLists in this model: {lists[:8]}"
    )


def wrap_model(
    model: nn.Module,
    tokenizer: object,
    name: str | None = None,
    blocks_path: str | None = None,
) -> LanguageModel:
    """Wrap an already loaded causal LM and tokenizer (e.g. a tiny test model)."""
    blocks, path = find_blocks(model, blocks_path)
    if getattr(tokenizer, "pad_token", None) is None:
        eos = getattr(tokenizer, "eos_token", None)
        if eos is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = eos
    model.eval()
    param = next(model.parameters())
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        blocks_path=path,
        name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        device=input_device(model),
        dtype=param.dtype,
    )


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its first parameter, or, for a model
    dispatched by accelerate (``device_map``, CPU/disk offload), the execution device of its
    input embeddings (offloaded weights sit on the ``meta`` device until a forward pass)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hook = getattr(embeddings, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if embeddings is not None and hasattr(model, "hf_device_map"):
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    return next(model.parameters()).device
