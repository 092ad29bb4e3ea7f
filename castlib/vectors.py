"""`SteeringVector`: per-layer directions plus everything needed to re-apply them.

A steering vector is a map ``l -> v_l`` (one float32 vector of the residual width per decoder
block it touches) with metadata: the model id, hidden size and depth it was made on, the site
(``"block_output"``: the output of decoder block l, where castlib both reads and writes), the
method that produced it and its parameters, and the castlib version.

Vectors are values: ``a + b`` and ``a - b`` add layer-wise (a layer missing on one side counts
as zero), ``c * a`` scales, and ``save``/``load`` round-trip exactly through safetensors with
the metadata stored in the file header.

llama.cpp control vectors (`to_gguf`, `from_gguf`): castlib layer ``l`` (the output of block
``l``) is the GGUF tensor ``direction.l``, which llama.cpp adds to the output of its block ``l``
(it stores it at buffer offset ``l - 1``, so block 0 cannot be steered); the source lines are
cited in `castlib.interop`.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .validate import check_finite_number

__all__ = ["SteeringVector", "SITE"]

SITE = "block_output"


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Per-layer steering directions with their provenance.

    Attributes:
        layers: ``{layer index: tensor [hidden_size]}``.
        model_id: id or path of the model the vector was extracted from.
        hidden_size: residual-stream width of that model.
        n_layers: number of decoder blocks of that model.
        site: where it was read and is written (``"block_output"``).
        method: the method that made it (e.g. ``"cast"``).
        params: the method's parameters (JSON-serialisable).
        version: castlib version that made it.
    """

    layers: Mapping[int, torch.Tensor]
    model_id: str
    hidden_size: int
    n_layers: int
    site: str = SITE
    method: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        for name in ("hidden_size", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SteeringVector {name} must be an int >= 1, got {value!r}")
        for name in ("model_id", "site", "method", "version"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(
                    f"SteeringVector {name} must be a string, got {getattr(self, name)!r}"
                )
        if not self.model_id.strip():
            raise ValueError("SteeringVector model_id must name the model the vector was made on")
        if not isinstance(self.params, Mapping):
            raise TypeError(f"SteeringVector params must be a dict, got {self.params!r}")
        if not isinstance(self.layers, Mapping):
            raise TypeError(f"SteeringVector layers must be a dict, got {type(self.layers)}")
        clean: dict[int, torch.Tensor] = {}
        for layer, vec in self.layers.items():
            if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
                raise TypeError(f"layer indices must be int, got {layer!r}")
            layer = int(layer)
            if not 0 <= layer < self.n_layers:
                raise IndexError(f"layer {layer} out of range for a {self.n_layers}-layer model")
            if layer in clean:
                raise ValueError(f"layer {layer} given twice")
            vec = torch.as_tensor(vec).detach()
            if vec.is_complex() or vec.dtype == torch.bool:
                raise TypeError(f"layer {layer}: vector of dtype {vec.dtype}, expected floats")
            if vec.shape != (self.hidden_size,):
                raise ValueError(
                    f"layer {layer}: vector of shape {tuple(vec.shape)}, expected "
                    f"({self.hidden_size},)"
                )
            if not torch.isfinite(vec).all():
                raise ValueError(f"layer {layer}: vector has non-finite values")
            clean[layer] = vec.to(torch.float32).cpu()
        object.__setattr__(self, "layers", dict(sorted(clean.items())))
        object.__setattr__(self, "params", dict(self.params))

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_tensor(
        cls,
        tensor: torch.Tensor,
        model_id: str,
        n_layers: int,
        layers: list[int] | None = None,
        **meta: Any,
    ) -> SteeringVector:
        """From a ``[n_layers_given, hidden]`` tensor (rows = ``layers``, default all)."""
        if tensor.ndim != 2:
            raise ValueError(f"expected a [layers, hidden] tensor, got {tuple(tensor.shape)}")
        layers = list(range(tensor.shape[0])) if layers is None else list(layers)
        if len(layers) != tensor.shape[0]:
            raise ValueError(f"{tensor.shape[0]} rows but {len(layers)} layer indices")
        repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
        if repeated:
            raise ValueError(f"layers {repeated} repeated in layers={layers}: one row per layer")
        return cls(
            layers={layer: tensor[i] for i, layer in enumerate(layers)},
            model_id=model_id,
            hidden_size=tensor.shape[1],
            n_layers=n_layers,
            **meta,
        )

    # -- helpers ---------------------------------------------------------------------------
    @property
    def layer_ids(self) -> list[int]:
        return list(self.layers)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.layers[layer]

    def select(self, layers: list[int] | int) -> SteeringVector:
        """The same vector restricted to ``layers``."""
        layers = [layers] if isinstance(layers, int) else list(layers)
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise KeyError(f"layers {missing} not in this vector (has {self.layer_ids})")
        return replace(self, layers={layer: self.layers[layer] for layer in layers})

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.layers.items()}

    def check_compatible(self, lm: Any) -> None:
        """Raise a clear error unless ``lm`` is the model the vector was made on: the same
        ``model_id`` (the name it was loaded as), width and depth, and a vector read at the
        site castlib writes (``block_output``).

        A vector of the same model loaded under another name (a local copy of a hub id) can
        be re-labelled explicitly: ``dataclasses.replace(vector, model_id=lm.name)``."""
        if self.site != SITE:
            raise ValueError(
                f"steering vector read at site {self.site!r}; castlib steers at {SITE!r} only"
            )
        if lm.hidden_size != self.hidden_size or lm.n_layers != self.n_layers:
            raise ValueError(
                f"steering vector made on {self.model_id!r} (hidden {self.hidden_size}, "
                f"{self.n_layers} layers) cannot be applied to {lm.name!r} "
                f"(hidden {lm.hidden_size}, {lm.n_layers} layers)"
            )
        if lm.name != self.model_id:
            raise ValueError(
                f"steering vector made on model {self.model_id!r} cannot be applied to model "
                f"{lm.name!r}; if it is the same model under another name, re-label it: "
                f"dataclasses.replace(vector, model_id={lm.name!r})"
            )

    # -- arithmetic ---------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if (other.hidden_size, other.n_layers) != (self.hidden_size, self.n_layers):
            raise ValueError(
                f"cannot combine vectors of models with different shapes "
                f"({self.hidden_size}x{self.n_layers} vs {other.hidden_size}x{other.n_layers})"
            )
        if other.model_id != self.model_id or other.site != self.site:
            raise ValueError(
                f"cannot combine a vector of model {self.model_id!r} (site {self.site!r}) with one "
                f"of model {other.model_id!r} (site {other.site!r}): activations of different "
                f"models do not share a basis"
            )
        layers = dict(self.layers)
        for layer, vec in other.layers.items():
            layers[layer] = layers[layer] + sign * vec if layer in layers else sign * vec
        op = "+" if sign > 0 else "-"
        return replace(
            self,
            layers=layers,
            method=f"({self.method}){op}({other.method})",
            params={"left": dict(self.params), "right": dict(other.params)},
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, scalar: float) -> SteeringVector:
        if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):
            return NotImplemented
        scale = check_finite_number(scalar, "scale")
        return replace(self, layers={k: v * scale for k, v in self.layers.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> SteeringVector:
        if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):
            return NotImplemented
        if check_finite_number(scalar, "divisor") == 0:
            raise ZeroDivisionError("cannot divide a steering vector by 0")
        return self * (1.0 / float(scalar))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self.metadata() == other.metadata()
            and self.layer_ids == other.layer_ids
            and all(torch.equal(self.layers[k], other.layers[k]) for k in self.layers)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- persistence ----------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "site": self.site,
            "method": self.method,
            "params": self.params,
            "version": self.version,
        }

    def save(self, path: str | Path) -> Path:
        """Write the vector as safetensors (tensors ``layer.<l>``; metadata in the header)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.layers.items()}
        try:
            header = json.dumps(self.metadata(), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"cannot save the steering vector to {path}: its metadata is not plain JSON ({err})"
            ) from err
        save_file(tensors, str(path), metadata={"castlib": header})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by `save`.

        A missing file raises FileNotFoundError; an unreadable file, a tensor not named
        ``layer.<index>`` or bad metadata raise ValueError naming the path."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"steering vector file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                keys = list(f.keys())
                tensors = {key: f.get_tensor(key) for key in keys}
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
        fields = {"model_id", "hidden_size", "n_layers", "site", "method", "params", "version"}
        if not isinstance(meta, dict) or not {"model_id", "hidden_size", "n_layers"} <= set(meta):
            raise ValueError(
                f"{path}: castlib metadata must be an object with at least model_id, hidden_size "
                f"and n_layers, got {meta!r}"
            )
        unknown = sorted(set(meta) - fields)
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
        try:
            return cls(layers=layers, **meta)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(f"{path}: invalid steering vector ({err})") from err

    def to_gguf(self, path: str | Path, *, model_hint: str | None = None) -> Path:
        """Write a llama.cpp control vector (`to_gguf`)."""
        return to_gguf(self, path, model_hint=model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, lm: Any = None, **shape: Any) -> SteeringVector:
        """Read a llama.cpp control vector (`from_gguf`)."""
        return from_gguf(path, lm, **shape)

    def __repr__(self) -> str:
        return (
            f"SteeringVector(method={self.method!r}, model={self.model_id!r}, "
            f"layers={self.layer_ids}, hidden={self.hidden_size})"
        )


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
        model_id: the model's id without a loaded model (default: ``lm.name``, else the
            file's ``controlvector.model_hint``).
        n_layers: the model's depth without a loaded model.
        hidden_size: the model's width without a loaded model.

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
