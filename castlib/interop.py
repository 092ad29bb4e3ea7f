"""Steering vectors that leave castlib: llama.cpp control vectors (GGUF), steering-vectors, repeng.

llama.cpp control vectors
-------------------------
A llama.cpp control vector is a GGUF file with ``general.architecture = "controlvector"``,
``controlvector.model_hint`` (the model it was made for) and ``controlvector.layer_count`` (the
number of direction tensors) as metadata, and one 1-D float32 tensor ``direction.N`` of the
model's width per steered layer. llama.cpp (``llama-cli``/``llama-server``
``--control-vector[-scaled] FILE [STRENGTH]``) adds ``STRENGTH * direction.N`` to the residual
stream at every position (prompt included).

Layer numbering (read from llama.cpp's source, ggml-org/llama.cpp):

* ``common_control_vector_load_one`` (common/common.cpp) rejects ``direction.0`` ("invalid
  (zero) direction tensor layer index") and stores ``direction.N`` at offset ``(N - 1) * n_embd``
  of its buffer ("layer 1 at [0]");
* ``llama_adapter_cvec::apply`` (src/llama-adapter.cpp) copies buffer offset
  ``(il - 1) * n_embd`` into ``tensors[il]`` for ``il = 1 .. n_layer - 1``
  ("there's never a tensor for layer 0");
* every model graph (e.g. src/models/llama.cpp) runs ``for il in 0 .. n_layer - 1`` and ends the
  block with ``cur = build_cvec(cur, il)`` (= ``cur + tensors[il]``) right before ``l_out``.

So the one-position offset lives in llama.cpp's buffer, not in the layer: ``direction.N`` is added
to the output of 0-based block ``N``, which is castlib's ``lm.blocks[N]`` (site
``"block_output"``), and block 0's output cannot be steered from a GGUF file. In Hugging Face
``output_hidden_states`` numbering that site is ``hidden_states[N + 1]``. repeng uses the same
convention (its ``ControlVector.directions[N]`` steers ``model.layers[N]`` and is exported as
``direction.N``). `to_gguf` therefore writes castlib layer ``l`` as ``direction.l`` and refuses
a vector with a layer-0 direction; `from_gguf` reads ``direction.N`` as castlib layer ``N``.

castlib's own metadata (`SteeringVector.metadata`) travels in the extra key
``castlib.metadata`` (JSON), so ``from_gguf(to_gguf(v))`` equals ``v``; llama.cpp and repeng
ignore the key. Applying ``v`` in castlib with ``steer(lm, v, alpha, positions="all")`` is what
llama.cpp does with ``--control-vector-scaled FILE alpha``.

steering-vectors and repeng
---------------------------
`to_steering_vectors` / `from_steering_vectors` convert to and from ``steering_vectors.
SteeringVector`` (``layer_type="decoder_block"``: its matcher ``model.layers.{num}`` is
castlib's ``lm.blocks[num]``); `to_repeng` / `from_repeng` to and from ``repeng.ControlVector``
(directions keyed by block index). Both peers add ``multiplier * v`` (steering-vectors with
``min_token_index=0``) or ``coeff * v`` (repeng) to the block output at every position, as
castlib's ``positions="all"`` does. The peers are optional: the functions import them when
called and say how to install them when they are missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .vector_files import GGUF_ARCH
from .vectors import SITE, SteeringVector, from_gguf, to_gguf

__all__ = [
    "GGUF_ARCH",
    "to_gguf",
    "from_gguf",
    "to_steering_vectors",
    "from_steering_vectors",
    "to_repeng",
    "from_repeng",
    "import_repeng",
]

_PEERS_HINT = (
    "their pins predate transformers 5 / numpy 2, so they live in their own environment: "
    "bash benchmarks/setup_peers.sh makes benchmarks/.venv-bench (or: pip install scikit-learn, "
    'then pip install --no-deps "steering-vectors>=0.12" "repeng>=0.4")'
)


# --------------------------------------------------------------------------- peers


def _import_steering_vectors() -> Any:
    try:
        import steering_vectors
    except ImportError as exc:
        raise ImportError(f"steering-vectors is not installed: {_PEERS_HINT}") from exc
    return steering_vectors


def import_repeng() -> Any:
    """Import repeng (its ``extract`` and ``control`` modules loaded).

    repeng 0.4 annotates with ``np.float_`` at class-definition time, which NumPy 2 removed;
    the alias ``np.float_ = np.float64`` is set before the import when it is missing (the only
    change made to another module).
    """
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    try:
        import repeng
        import repeng.control
        import repeng.extract
    except ImportError as exc:
        raise ImportError(f"repeng is not installed: {_PEERS_HINT}") from exc
    return repeng


def _shape_from(
    lm: Any, model_id: str | None, n_layers: int | None, default_id: str, layers: list[int]
) -> tuple[str, int]:
    depth = lm.n_layers if lm is not None else n_layers
    if depth is None:
        raise ValueError("pass lm= or n_layers= (the model's number of decoder blocks)")
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {depth}-layer model")
    return model_id or (lm.name if lm is not None else default_id), depth


def _checked_width(lm: Any, layers: dict[int, torch.Tensor], source: str) -> int:
    widths = {int(v.numel()) for v in layers.values()}
    if len(widths) != 1:
        raise ValueError(f"{source}: directions of different lengths {sorted(widths)}")
    width = widths.pop()
    if lm is not None and width != lm.hidden_size:
        raise ValueError(
            f"{source} has hidden size {width}, but {lm.name!r} has hidden size {lm.hidden_size}"
        )
    return width


def to_steering_vectors(vector: SteeringVector) -> Any:
    """``steering_vectors.SteeringVector`` with the same per-block directions
    (``layer_type="decoder_block"``, float32 on CPU)."""
    sv = _import_steering_vectors()
    if vector.site != SITE:
        raise ValueError(f"only {SITE!r} vectors map to decoder_block, not {vector.site!r}")
    return sv.SteeringVector(
        layer_activations={layer: vec.clone() for layer, vec in vector.layers.items()},
        layer_type="decoder_block",
    )


def from_steering_vectors(
    vector: Any, lm: Any = None, *, model_id: str | None = None, n_layers: int | None = None
) -> SteeringVector:
    """castlib `SteeringVector` from a ``steering_vectors.SteeringVector`` of decoder blocks.

    ``lm`` (or ``n_layers``, and optionally ``model_id``) gives the model; negative layer
    numbers are counted from the end, as steering-vectors does.
    """
    layer_type = getattr(vector, "layer_type", None)
    if layer_type != "decoder_block":
        raise ValueError(
            f"only decoder_block steering vectors are castlib's site (block outputs); this one "
            f"has layer_type={layer_type!r}"
        )
    depth = lm.n_layers if lm is not None else n_layers
    layers = {
        (int(k) % depth if depth and int(k) < 0 else int(k)): torch.as_tensor(v).detach().cpu()
        for k, v in vector.layer_activations.items()
    }
    width = _checked_width(lm, layers, "steering-vectors vector")
    name, depth = _shape_from(lm, model_id, n_layers, "steering-vectors", list(layers))
    return SteeringVector(
        layers=layers,
        model_id=name,
        hidden_size=width,
        n_layers=depth,
        method="steering-vectors",
    )


def to_repeng(vector: SteeringVector, model_type: str | None = None) -> Any:
    """``repeng.ControlVector`` with the same per-block directions (float32 numpy arrays).

    ``model_type`` defaults to the vector's ``model_id`` (repeng stores the model's
    ``config.model_type`` there and only compares it when combining vectors).
    """
    repeng = import_repeng()
    if vector.site != SITE:
        raise ValueError(f"repeng steers block outputs; this vector's site is {vector.site!r}")
    return repeng.extract.ControlVector(
        model_type=model_type or vector.model_id,
        directions={layer: vec.numpy().astype(np.float32) for layer, vec in vector.layers.items()},
    )


def from_repeng(
    control: Any, lm: Any = None, *, model_id: str | None = None, n_layers: int | None = None
) -> SteeringVector:
    """castlib `SteeringVector` from a ``repeng.ControlVector`` (directions keyed by block)."""
    directions = getattr(control, "directions", None)
    if not isinstance(directions, dict) or not directions:
        raise ValueError("expected a repeng ControlVector with a non-empty 'directions' dict")
    layers = {
        int(k): torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1).copy())
        for k, v in directions.items()
    }
    width = _checked_width(lm, layers, "repeng ControlVector")
    name, depth = _shape_from(lm, model_id, n_layers, str(control.model_type), list(layers))
    return SteeringVector(
        layers=layers,
        model_id=name,
        hidden_size=width,
        n_layers=depth,
        method="repeng",
        params={"model_type": str(control.model_type)},
    )
