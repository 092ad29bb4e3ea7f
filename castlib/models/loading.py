"""Loading decoder language models: an embedded model, a Hugging Face id or a local folder.

`load_model` returns a `castlib.models.language_model.LanguageModel`, on one device
(``device``, ``dtype``) or sharded by accelerate (``device_map``). An embedded model
(`castlib.models.embedded.EMBEDDED_MODELS`) loads from its dequantised cache
(`castlib.models.cache.embedded_model_path`); with the Hugging Face hub unreachable, only the
local Hugging Face cache is read and the error says why (`castlib.hub`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..activation_store import store_from_env
from ..hub import HubUnreachableError, unreachable_reason
from .cache import embedded_model_path
from .embedded import EMBEDDED_MODEL, EMBEDDED_MODELS, embedded_models, suggest_model
from .language_model import LanguageModel, wrap_model

__all__ = ["load_model", "resolve_device", "resolve_dtype"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else MPS when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """``"auto"`` is bfloat16 on CUDA where supported (else float16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(names)}")
    return names[dtype]


def load_model(
    name_or_path: str = EMBEDDED_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    blocks_path: str | None = None,
    device_map: str | dict[str, object] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    **from_pretrained_kwargs: object,
) -> LanguageModel:
    """Load a causal LM and its tokenizer, ready to record and steer.

    Args:
        name_or_path: an embedded model (`embedded_models()`: ``"gemma-3-270m"``, the default,
            or ``"qwen2.5-coder-1.5b"`` with the ``qwen`` extra), a Hugging Face model id, or a
            local folder in the Hugging Face layout. A name close to an embedded one that is
            neither a folder nor a hub id (no ``/``) fails with a suggestion.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"auto"`` (bf16 on CUDA where supported, float32 on CPU) or a torch dtype/name.
        blocks_path: attribute path of the decoder blocks, for architectures castlib does not
            know (e.g. ``"model.layers"``).
        device_map: shard the model with accelerate instead of placing it on ``device``:
            ``"auto"`` (fill the GPUs in order, then CPU, then disk), ``"balanced"``,
            ``"sequential"``, or an explicit ``{module name: device}`` map. Decoder blocks may
            then live on different devices; recording and steering stay exact (the vector is
            moved to each activation's device inside the hook, recorded states are gathered
            to CPU). ``lm.device`` is then the device of the input embeddings.
        max_memory: with ``device_map``, the most memory accelerate may use per device, e.g.
            ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}``.
        from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``
            (e.g. ``revision=``, ``trust_remote_code=``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is None and max_memory is not None:
        raise ValueError("max_memory= needs device_map= (e.g. device_map='auto')")
    if device_map is not None and device != "auto":
        raise ValueError(
            f"give either device={device!r} or device_map={device_map!r}, not both "
            "(device_map places every module itself)"
        )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"name_or_path must be a model id or folder, got {name_or_path!r}")
    name_or_path = str(name_or_path)
    if device_map is not None:
        from_pretrained_kwargs = {
            **from_pretrained_kwargs,
            "device_map": device_map,
            **({"max_memory": max_memory} if max_memory is not None else {}),
        }
    close = None if name_or_path in EMBEDDED_MODELS else suggest_model(name_or_path)
    if close is not None and "/" not in name_or_path and not Path(name_or_path).exists():
        raise ValueError(
            f"unknown model {name_or_path!r}; did you mean {close!r}? "
            f"(embedded: {embedded_models()}; or a Hugging Face id or a local folder)"
        )
    if name_or_path in EMBEDDED_MODELS:
        source = str(embedded_model_path(name_or_path))
    else:
        source = name_or_path
    kwargs = dict(from_pretrained_kwargs)
    offline = None if Path(source).expanduser().is_dir() else unreachable_reason()
    if offline is not None:
        kwargs["local_files_only"] = True  # the local Hugging Face cache only: no retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=kwargs.get("local_files_only", False)
        )
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **kwargs)
    except OSError as err:
        hint = f" Did you mean {close!r}?" if close else ""
        if offline is not None:
            raise HubUnreachableError(
                f"cannot load model {name_or_path!r}: not an embedded model "
                f"({embedded_models()}), not a local folder, not in the local Hugging Face cache, "
                f"and the Hugging Face hub is unreachable: {offline}.{hint}"
            ) from err
        raise OSError(
            f"cannot load model {name_or_path!r}: not an embedded model ({embedded_models()}), "
            f"not a local folder, and not reachable on the Hugging Face hub ({err}).{hint}"
        ) from err
    if device_map is None:
        model.to(dev)
    lm = wrap_model(model, tokenizer, name=name_or_path, blocks_path=blocks_path)
    lm.activation_store = store_from_env()
    return lm
