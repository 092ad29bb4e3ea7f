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

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .validate import check_finite_number, check_layer_vector
from .vector_files import read_gguf, read_safetensors, write_gguf, write_safetensors

__all__ = ["SteeringVector", "SITE", "check_layer_vector"]

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
        """Write the vector as safetensors (tensors ``layer.<l>``; metadata in the header:
        `castlib.vector_files.write_safetensors`)."""
        return write_safetensors(path, self.layers, self.metadata())

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by `save`.

        A missing file raises FileNotFoundError; an unreadable file, a tensor not named
        ``layer.<index>`` or bad metadata raise ValueError naming the path."""
        layers, meta = read_safetensors(path)
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


def to_gguf(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (castlib layer ``l`` -> ``direction.l``;
    the format: `castlib.vector_files`).

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
    return write_gguf(
        path, vector.layers, model_hint=model_hint or vector.model_id, metadata=vector.metadata()
    )


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
        ValueError: the file is not a control vector (`castlib.vector_files.read_gguf` says
            which rule it breaks) or is for another hidden size or depth.
    """
    path = Path(path)
    directions, meta, hint = read_gguf(path)
    width = int(next(iter(directions.values())).numel())
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
    return SteeringVector(
        layers=directions,
        model_id=model_id or (lm.name if lm is not None else None) or hint or path.stem,
        hidden_size=width,
        n_layers=depth,
        method="gguf",
        params={"source": path.name, **({"model_hint": hint} if hint else {})},
    )
