"""The two file formats a steering vector is written in, as plain tensors and metadata.

* **safetensors** (`write_safetensors`, `read_safetensors`): one float32 tensor ``layer.<l>``
  per steered block and castlib's metadata as JSON under the header key ``"castlib"``.
* **llama.cpp control vectors** (`write_gguf`, `read_gguf`): a GGUF file with
  ``general.architecture = "controlvector"``, ``controlvector.model_hint``,
  ``controlvector.layer_count`` and one 1-D float32 tensor ``direction.<N>`` per steered block;
  castlib's metadata rides along under ``castlib.metadata``. The layer mapping (castlib layer
  ``l`` is ``direction.l``, block 0 cannot be steered) is in `castlib.interop`'s docstring.

This module knows the formats only: it reads and writes ``{layer: tensor}`` maps and metadata
dicts and refuses malformed files with the path named. What makes a valid steering vector
(widths, depths, the model it fits) is checked by `castlib.vectors.SteeringVector`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .validate import check_save_folder

__all__ = [
    "GGUF_ARCH",
    "read_gguf",
    "read_safetensors",
    "write_gguf",
    "write_safetensors",
]

METADATA_FIELDS = frozenset(
    {"model_id", "hidden_size", "n_layers", "site", "method", "params", "version"}
)
GGUF_ARCH = "controlvector"
KEY_ARCH = "general.architecture"
KEY_MODEL_HINT = f"{GGUF_ARCH}.model_hint"
KEY_LAYER_COUNT = f"{GGUF_ARCH}.layer_count"
KEY_CASTLIB = "castlib.metadata"
_DIRECTION = "direction."


# --------------------------------------------------------------------------- safetensors


def write_safetensors(
    path: str | Path, layers: Mapping[int, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write ``layers`` as tensors ``layer.<l>`` with ``metadata`` (plain JSON) in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot save the steering vector to {path}: it is a folder; give a file path "
            f"(e.g. {path / 'vector.safetensors'})"
        )
    check_save_folder(path.parent, [path.name], "SteeringVector.save")
    tensors = {f"layer.{k}": v.contiguous() for k, v in layers.items()}
    try:
        header = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"cannot save the steering vector to {path}: its metadata is not plain JSON ({err})"
        ) from err
    try:
        save_file(tensors, str(path), metadata={"castlib": header})
    except Exception as err:  # noqa: BLE001 - SafetensorError (disk full, ...): name the file
        raise OSError(
            f"could not write the steering vector to {path} ({type(err).__name__}: {err})"
        ) from err
    return path


def read_safetensors(path: str | Path) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """The ``{layer: tensor}`` map and castlib metadata of a file written by
    `write_safetensors`. A missing file raises FileNotFoundError; an unreadable file, a tensor
    not named ``layer.<index>`` or bad metadata raise ValueError naming the path."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"steering vector file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends: name the file
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err})"
        ) from err
    if "castlib" not in header:
        raise ValueError(f"{path} is not a castlib steering vector (no castlib metadata)")
    try:
        meta = json.loads(header["castlib"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: castlib metadata is not valid JSON ({err.msg})") from err
    if not isinstance(meta, dict) or not {"model_id", "hidden_size", "n_layers"} <= set(meta):
        raise ValueError(
            f"{path}: castlib metadata must be an object with at least model_id, hidden_size "
            f"and n_layers, got {meta!r}"
        )
    unknown = sorted(set(meta) - METADATA_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown castlib metadata keys {unknown}")
    layers = {}
    for key, tensor in tensors.items():
        prefix, _, index = key.partition(".")
        if not (prefix == "layer" and index.isascii() and index.isdigit()) or index != str(
            int(index)
        ):
            raise ValueError(f"{path}: tensor {key!r} is not named layer.<index>")
        layers[int(index)] = tensor
    return layers, meta


# --------------------------------------------------------------------------- llama.cpp GGUF


def write_gguf(
    path: str | Path,
    layers: Mapping[int, torch.Tensor],
    *,
    model_hint: str,
    metadata: dict[str, Any],
) -> Path:
    """Write ``layers`` as the tensors ``direction.<l>`` of a llama.cpp control vector."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), GGUF_ARCH)  # writes general.architecture
    try:
        writer.add_string(KEY_MODEL_HINT, model_hint)
        writer.add_int32(KEY_LAYER_COUNT, len(layers))
        writer.add_string(KEY_CASTLIB, json.dumps(metadata, sort_keys=True))
        for layer, vec in layers.items():
            writer.add_tensor(f"{_DIRECTION}{layer}", vec.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def _field_string(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (UnicodeDecodeError, TypeError, IndexError):
        return None


def read_gguf(path: str | Path) -> tuple[dict[int, torch.Tensor], dict[str, Any], str | None]:
    """The directions (``direction.N`` -> layer ``N``, float32 1-D tensors of one width),
    castlib's metadata (``{}`` for a file another tool wrote) and ``controlvector.model_hint``
    of a llama.cpp control vector.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a control vector (another ``general.architecture``, no
            ``direction.N`` tensors, other tensors, ``direction.0``, non-float32, non-1-D or
            repeated tensors, directions of different widths); the message says which.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control vector file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a GGUF file"
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc
    arch = _field_string(reader, KEY_ARCH)
    if arch is not None and arch != GGUF_ARCH:
        raise ValueError(
            f"{path} is not a control vector: its general.architecture is {arch!r} "
            f"(a control vector has {GGUF_ARCH!r})"
        )
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if not name.startswith(_DIRECTION) or not name[len(_DIRECTION) :].isdigit():
            raise ValueError(
                f"{path} is not a control vector: tensor {name!r} is not named 'direction.<N>'"
            )
        layer = int(name[len(_DIRECTION) :])
        if layer == 0:
            raise ValueError(
                f"{path}: 'direction.0' is invalid in llama.cpp's format (block 0's output "
                "cannot be steered; direction.N is the output of block N)"
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: {name} is {tensor.tensor_type.name}, expected F32")
        if len(tensor.shape) != 1:
            raise ValueError(f"{path}: {name} has shape {list(tensor.shape)}, expected 1-D")
        if layer in directions:
            raise ValueError(f"{path}: {name} appears twice")
        directions[layer] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    if not directions:
        raise ValueError(f"{path} is not a control vector: it has no 'direction.<N>' tensors")
    widths = {int(v.numel()) for v in directions.values()}
    if len(widths) != 1:
        raise ValueError(f"{path}: direction tensors of different lengths {sorted(widths)}")
    meta_text = _field_string(reader, KEY_CASTLIB)
    meta: dict[str, Any] = json.loads(meta_text) if meta_text else {}
    return directions, meta, _field_string(reader, KEY_MODEL_HINT)
