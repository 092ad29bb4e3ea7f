"""`SteeringVector`: per-layer directions plus everything needed to re-apply them.

A steering vector is a map ``l -> v_l`` (one float32 vector of the residual width per decoder
block it touches) with metadata: the model id, hidden size and depth it was made on, the site
(``"block_output"``: the output of decoder block l, where castlib both reads and writes), the
method that produced it and its parameters, and the castlib version.

Vectors are values: ``a + b`` and ``a - b`` add layer-wise (a layer missing on one side counts
as zero), ``c * a`` scales, and ``save``/``load`` round-trip exactly through safetensors with
the metadata stored in the file header.

llama.cpp control vectors: ``to_gguf``/``from_gguf`` (`castlib.gguf_vectors`).
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .validate import check_finite_number, check_save_folder

__all__ = ["SteeringVector", "SITE", "check_layer_vector"]

SITE = "block_output"


def check_layer_vector(vec: Any, layer: int, hidden_size: int) -> torch.Tensor:
    """One layer's direction checked and copied: the one validator of per-layer vectors, used
    by `SteeringVector` and by `castlib.steer` for every accepted vector form.

    Accepted: a real-valued tensor (or array, or list of numbers) of shape ``(hidden_size,)``
    with values (not on the meta device) that are finite in float32. Returned as a float32
    CPU *copy*, so later edits of the caller's tensor change nothing."""
    if not isinstance(vec, torch.Tensor):
        try:
            vec = torch.as_tensor(vec)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"layer {layer}: a vector must be a tensor of shape ({hidden_size},), got "
                f"{type(vec).__name__} ({err})"
            ) from err
    if vec.is_complex() or vec.dtype == torch.bool:
        raise TypeError(
            f"layer {layer}: vector of dtype {vec.dtype}; expected a real floating-point "
            f"tensor (float32, bfloat16, float16 or float64; stored as float32)"
        )
    if vec.device.type == "meta":
        raise ValueError(
            f"layer {layer}: vector on the meta device has no values; expected a float tensor "
            f"on the cpu or an accelerator (load or compute its values first)"
        )
    if tuple(vec.shape) != (hidden_size,):
        raise ValueError(
            f"layer {layer}: vector of shape {tuple(vec.shape)} does not match the hidden size "
            f"{hidden_size}: expected ({hidden_size},)"
        )
    out = vec.detach().to(device="cpu", dtype=torch.float32, copy=True)
    if not torch.isfinite(out).all():
        raise ValueError(
            f"layer {layer}: vector has non-finite values (NaN, or beyond float32's range "
            f"of +-3.4e38); expected finite float32 values"
        )
    return out


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
            clean[layer] = check_layer_vector(vec, layer, self.hidden_size)  # a copy
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
        """From a ``[n_layers_given, hidden]`` tensor (rows = ``layers``, default all); the
        rows are copied, so the vector does not change when ``tensor`` does."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
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
        for layer, vec in layers.items():
            if not torch.isfinite(vec).all():
                raise ValueError(
                    f"the {'sum' if sign > 0 else 'difference'} of these steering vectors is "
                    f"non-finite at layer {layer} (beyond float32's 3.4e38); rescale them first"
                )
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
        layers = {k: v * scale for k, v in self.layers.items()}
        for layer, vec in layers.items():
            if not torch.isfinite(vec).all():
                raise ValueError(
                    f"scaling the steering vector by {scalar!r} makes layer {layer} non-finite "
                    f"(float32 holds at most 3.4e38; this layer's largest entry is "
                    f"{float(self.layers[layer].abs().max()):.3g}); use a smaller scale"
                )
        return replace(
            self,
            layers=layers,
            method=f"{scale!r}*({self.method})",
            params={"scale": scale, "of": dict(self.params)},
        )

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
        if path.is_dir():
            raise IsADirectoryError(
                f"cannot save the steering vector to {path}: it is a folder; give a file path "
                f"(e.g. {path / 'vector.safetensors'})"
            )
        check_save_folder(path.parent, [path.name], "SteeringVector.save")
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.layers.items()}
        try:
            header = json.dumps(self.metadata(), allow_nan=False)
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
        """Write a llama.cpp control vector (`castlib.gguf_vectors.to_gguf`)."""
        from .gguf_vectors import to_gguf

        return to_gguf(self, path, model_hint=model_hint)

    @classmethod
    def from_gguf(cls, path: str | Path, lm: Any = None, **shape: Any) -> SteeringVector:
        """Read a llama.cpp control vector (`castlib.gguf_vectors.from_gguf`)."""
        from .gguf_vectors import from_gguf

        return from_gguf(path, lm, **shape)

    def __repr__(self) -> str:
        return (
            f"SteeringVector(method={self.method!r}, model={self.model_id!r}, "
            f"layers={self.layer_ids}, hidden={self.hidden_size})"
        )
