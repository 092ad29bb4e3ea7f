"""llama.cpp control vectors (GGUF) for `castlib.vectors.SteeringVector`.

castlib layer ``l`` (the output of decoder block ``l``) is the GGUF tensor ``direction.l``,
which llama.cpp adds to the output of its block ``l`` (it stores it at buffer offset ``l - 1``,
so block 0 cannot be steered); the source lines are cited in `castlib.interop`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .vectors import SITE, SteeringVector

__all__ = ["to_gguf", "from_gguf", "GGUF_ARCH"]

# --------------------------------------------------------------------------- llama.cpp GGUF

GGUF_ARCH = "controlvector"
KEY_ARCH = "general.architecture"
KEY_MODEL_HINT = f"{GGUF_ARCH}.model_hint"
KEY_LAYER_COUNT = f"{GGUF_ARCH}.layer_count"
KEY_CASTLIB = "castlib.metadata"
_DIRECTION = "direction."


# --------------------------------------------------------------------------- GGUF


def to_gguf(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (castlib layer ``l`` -> ``direction.l``).

    Args:
        vector: the steering vector; its site must be ``"block_output"`` and it must not have a
            layer-0 direction (llama.cpp cannot steer the output of block 0; the layer
            mapping is in `castlib.interop`'s docstring). Use ``vector.select([...])`` to drop layers.
        path: the ``.gguf`` file to write (parent folders are created).
        model_hint: ``controlvector.model_hint`` (default: the vector's ``model_id``);
            llama.cpp's generator writes the model architecture, e.g. ``"llama"``.

    Returns:
        The path written.
    """
    import gguf

    if not isinstance(vector, SteeringVector):
        raise TypeError(f"to_gguf needs a castlib SteeringVector, got {type(vector).__name__}")
    if vector.site != SITE:
        raise ValueError(
            f"llama.cpp adds control vectors to decoder-block outputs; this vector's site is "
            f"{vector.site!r}, not {SITE!r}"
        )
    if 0 in vector.layers:
        raise ValueError(
            "llama.cpp cannot apply a direction to the output of block 0 (it rejects "
            "'direction.0'); drop layer 0 first, e.g. vector.select("
            f"{[layer for layer in vector.layer_ids if layer != 0]})"
        )
    if not vector.layers:
        raise ValueError("the steering vector has no layers to export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), GGUF_ARCH)  # writes general.architecture
    try:
        writer.add_string(KEY_MODEL_HINT, model_hint or vector.model_id)
        writer.add_int32(KEY_LAYER_COUNT, len(vector.layers))
        writer.add_string(KEY_CASTLIB, json.dumps(vector.metadata(), sort_keys=True))
        for layer, vec in vector.layers.items():
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


def from_gguf(
    path: str | Path,
    lm: Any = None,
    *,
    model_id: str | None = None,
    n_layers: int | None = None,
    hidden_size: int | None = None,
) -> SteeringVector:
    """Read a llama.cpp control vector (``direction.N`` -> castlib layer ``N``).

    A file written by `to_gguf` carries castlib's metadata and is read back equal. Another
    file (llama.cpp's ``cvector-generator``, repeng) has only the directions: the model's
    depth must then come from ``lm`` or ``n_layers``; ``model_id`` defaults to ``lm.name``,
    else ``controlvector.model_hint``.

    Args:
        path: the ``.gguf`` file.
        lm: the model to apply it to (optional); the file is refused when its width or depth
            does not fit.
        model_id, n_layers, hidden_size: the same facts without a loaded model.

    Raises:
        ValueError: the file is not a control vector (another ``general.architecture``, no
            ``direction.N`` tensors, other tensors, ``direction.0``, non-float32 or non-1-D
            tensors) or is for another hidden size or depth; the message says which.
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
    width = widths.pop()
    meta_text = _field_string(reader, KEY_CASTLIB)
    meta: dict[str, Any] = json.loads(meta_text) if meta_text else {}
    expected_width = lm.hidden_size if lm is not None else hidden_size
    if expected_width is None:
        expected_width = meta.get("hidden_size")
    if expected_width is not None and width != expected_width:
        whom = f"{lm.name!r}" if lm is not None else "the expected model"
        raise ValueError(
            f"{path} is for hidden size {width}, but {whom} has hidden size {expected_width}"
        )
    depth = lm.n_layers if lm is not None else n_layers
    if meta:
        if depth is not None and depth != meta["n_layers"]:
            raise ValueError(
                f"{path} was made on {meta['model_id']!r} with {meta['n_layers']} layers, "
                f"not {depth}"
            )
        if model_id is not None:
            meta["model_id"] = model_id
        return SteeringVector(layers=directions, **meta)
    if depth is None:
        raise ValueError(
            f"{path} has no castlib metadata: pass lm= or n_layers= (the model's number of "
            "decoder blocks)"
        )
    deepest = max(directions)
    if deepest >= depth:
        raise ValueError(
            f"{path} has direction.{deepest}, but the model has only {depth} decoder blocks "
            f"(valid: direction.1 .. direction.{depth - 1})"
        )
    hint = _field_string(reader, KEY_MODEL_HINT)
    return SteeringVector(
        layers=directions,
        model_id=model_id or (lm.name if lm is not None else None) or hint or path.stem,
        hidden_size=width,
        n_layers=depth,
        method="gguf",
        params={"source": path.name, **({"model_hint": hint} if hint else {})},
    )
