"""Writing the residual stream: add (or patch) a steering vector at decoder-block outputs.

For each steered layer l and each selected token position t of row b, the output of block l
becomes

    add:      h'  = h + alpha * v_l
    replace:  h'  = (1 - alpha) * h + alpha * v_l      (alpha = 1 patches h := v_l)
    norm_preserving:  h'' = h' * ||h|| / ||h'||        (optional, after either op)

Selected positions:
    "all"   every token of every row;
    "last"  the last real token of each prompt (from the attention mask, so left and right
            padding both work) and, when the model runs with a KV cache (``generate``), every
            new token of each decode step.

The vector is cast to the activation's dtype and device inside the hook (once per
dtype/device); ``alpha == 0`` returns the block output untouched (bit-identical). The hook
steers with a snapshot of the vector taken by `steer` (a float32 copy), so editing the tensor
it was given afterwards changes nothing.

Overflow is made visible, never silent: a steered state that is non-finite, or whose squared
norm overflows float32 (what the next block's RMS/layer norm computes; from about
``|h'| > 1.8e19``, e.g. ``alpha=1e30``), is replaced by NaN. Every log-prob that depends on it is
then NaN: `castlib.scoring.evaluate` and `castlib.record.record_activations` raise
`FloatingPointError`, and a tuning grid records the point as failed (instead of the state
collapsing to zero after the norm and every label tying).

`steer` registers the hooks at once and returns a `Steering` handle that is also a context
manager: ``with steer(lm, v, alpha=4, layers=[6]): ...`` removes every hook on exit, even after
an exception, and nested contexts compose (their hooks run in registration order).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from .hooks import ForwardInfo, HookGroup, hidden_of, watch_inputs, with_hidden
from .models import LanguageModel
from .padding import last_token_index
from .validate import check_finite_number
from .vectors import SteeringVector, check_layer_vector

__all__ = [
    "steer",
    "Steering",
    "override_positions",
    "as_layer_map",
    "active_steer_hooks",
    "installed_hooks",
    "foreign_hooks",
]

Positions = Literal["last", "all"]
Op = Literal["add", "replace"]


class SteerHook:
    """The forward hook of one steered block (see the module docstring for the math)."""

    def __init__(
        self,
        vector: torch.Tensor,
        alpha: float,
        positions: Positions,
        norm_preserving: bool,
        op: Op,
        info: ForwardInfo,
    ) -> None:
        self.vector = vector
        self.alpha = float(alpha)
        self.positions = positions
        self.norm_preserving = norm_preserving
        self.op = op
        self.info = info
        #: a ``[batch, seq]`` bool mask that, when set, replaces the position rule.
        self.override: torch.Tensor | None = None
        self._cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _vector_for(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        vec = self._cast.get(key)
        if vec is None:
            vec = self.vector.to(device=hidden.device, dtype=hidden.dtype)
            self._cast[key] = vec
        return vec

    def _rows_cols(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Index tensors of the positions to steer, or None for all positions."""
        batch, seq = hidden.shape[:2]
        if self.override is not None:
            if tuple(self.override.shape) != (batch, seq):
                raise RuntimeError(
                    f"position override of shape {tuple(self.override.shape)} does not match the "
                    f"activations [{batch}, {seq}]"
                )
            rows, cols = self.override.nonzero(as_tuple=True)
            return rows.to(hidden.device), cols.to(hidden.device)
        if self.positions == "all":
            return None
        if not self.info.active:
            raise RuntimeError(
                "castlib could not see the attention mask of this forward pass (the decoder "
                "blocks ran without their owning module's forward); positions='last' would be "
                "guesswork. Use positions='all' or report the architecture."
            )
        if self.info.past_length > 0:
            return None
        mask = self.info.attention_mask
        if mask is None:
            cols = torch.full((batch,), seq - 1, dtype=torch.long, device=hidden.device)
        else:
            if tuple(mask.shape) != (batch, seq):
                raise RuntimeError(
                    f"attention mask {tuple(mask.shape)} does not match the activations "
                    f"[{batch}, {seq}] of the steered block"
                )
            cols = last_token_index(mask).to(hidden.device)
        return torch.arange(batch, device=hidden.device), cols

    def _apply(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        if self.op == "add":
            y = x + self.alpha * vec
        else:
            y = (1.0 - self.alpha) * x + self.alpha * vec
        if self.norm_preserving:
            y = y * (x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        # overflow -> NaN (module docstring): no host sync, the scorers see the NaN
        overflow = ~torch.isfinite(y.float().pow(2).sum(dim=-1, keepdim=True))
        return y.masked_fill(overflow, float("nan"))

    def __call__(self, module: nn.Module, args: tuple, output: object) -> object:
        if self.alpha == 0.0:
            return output
        hidden = hidden_of(output)
        vec = self._vector_for(hidden)
        index = self._rows_cols(hidden)
        if index is None:
            new = self._apply(hidden, vec)
        else:
            rows, cols = index
            new = hidden.index_put((rows, cols), self._apply(hidden[rows, cols], vec))
        return with_hidden(output, new)


class Steering:
    """Handle of an active steering intervention; ``remove()`` or leave its ``with`` block.

    While active it is listed in ``lm.interventions`` (``kind == "steer"``).
    """

    kind = "steer"

    def __init__(
        self, lm: LanguageModel, hooks: HookGroup, steer_hooks: dict[int, SteerHook]
    ) -> None:
        self._lm = lm
        self._hooks = hooks
        self.steer_hooks = steer_hooks
        lm.interventions.append(self)

    @property
    def layers(self) -> list[int]:
        """The steered layers."""
        return sorted(self.steer_hooks)

    @property
    def active(self) -> bool:
        return bool(self._hooks.handles)

    def remove(self) -> None:
        try:
            self._hooks.remove()
        finally:
            if self in self._lm.interventions:
                self._lm.interventions.remove(self)

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def as_layer_map(
    lm: LanguageModel,
    vector: SteeringVector | Mapping[int, torch.Tensor] | torch.Tensor,
    layers: Sequence[int] | int | None,
) -> dict[int, torch.Tensor]:
    """Normalise the accepted vector forms to ``{layer: tensor [hidden]}``.

    A `SteeringVector` or dict gives its own layers (``layers`` selects among them); a
    ``[hidden]`` tensor needs ``layers`` and is used at each; an ``[n_layers, hidden]`` tensor
    gives one row per block.
    """
    if isinstance(vector, SteeringVector):
        vector.check_compatible(lm)
        mapping: dict[int, torch.Tensor] = dict(vector.layers)
    elif isinstance(vector, Mapping):
        if not vector:
            raise ValueError("steering vector dict is empty; give {layer: [hidden] tensor}")
        lm.check_layers(list(vector))  # ints in range, no duplicates (-1 and L-1 alike)
        mapping = {lm.check_layers(k)[0]: v for k, v in vector.items()}
    elif isinstance(vector, torch.Tensor):
        if vector.ndim == 1:
            if layers is None:
                raise ValueError("a single [hidden] vector needs layers=...")
            mapping = {layer: vector for layer in lm.check_layers(layers)}
        elif vector.ndim == 2 and vector.shape[0] == lm.n_layers:
            mapping = dict(enumerate(vector))
        else:
            raise ValueError(
                f"tensor vector must be [hidden] or [n_layers={lm.n_layers}, hidden], "
                f"got {tuple(vector.shape)}"
            )
    else:
        raise TypeError(f"cannot steer with a {type(vector).__name__}")
    lm.check_layers(list(mapping))
    # the one per-layer check (`castlib.vectors.check_layer_vector`); a float32 copy: a snapshot
    mapping = {
        layer: check_layer_vector(vec, layer, lm.hidden_size) for layer, vec in mapping.items()
    }
    if layers is not None:
        wanted = lm.check_layers(layers)
        missing = [layer for layer in wanted if layer not in mapping]
        if missing:
            raise KeyError(f"layers {missing} not in the steering vector (has {sorted(mapping)})")
        mapping = {layer: mapping[layer] for layer in wanted}
    if not mapping:
        raise ValueError("steering vector has no layers")
    return mapping


def steer(
    lm: LanguageModel,
    vector: SteeringVector | Mapping[int, torch.Tensor] | torch.Tensor,
    alpha: float = 1.0,
    layers: Sequence[int] | int | None = None,
    positions: Positions = "last",
    norm_preserving: bool = False,
    op: Op = "add",
) -> Steering:
    """Steer ``lm`` with ``vector``: add ``alpha * v_l`` to the output of each block l.

    Args:
        lm: the model.
        vector: a `SteeringVector`, ``{layer: [hidden]}``, a ``[hidden]`` tensor (with
            ``layers``) or a ``[n_layers, hidden]`` tensor.
        alpha: the scale, a finite number (the same at every steered layer; split it yourself
            across layers). NaN and infinities are refused.
        layers: which layers to steer (default: every layer the vector has).
        positions: ``"last"`` (last real prompt token and every generated token) or ``"all"``.
        norm_preserving: rescale each steered state to its original norm.
        op: ``"add"`` or ``"replace"`` (interpolate towards ``v_l``; alpha = 1 patches).

    Returns:
        A `Steering` handle; use it as a context manager or call ``remove()``.
    """
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
    if op not in ("add", "replace"):
        raise ValueError(f"op must be 'add' or 'replace', got {op!r}")
    alpha = check_finite_number(alpha, "alpha")
    if not isinstance(norm_preserving, bool):
        raise TypeError(f"norm_preserving must be True or False, got {norm_preserving!r}")
    mapping = as_layer_map(lm, vector, layers)
    info = ForwardInfo()
    hooks = HookGroup()
    steer_hooks: dict[int, SteerHook] = {}
    try:
        for handle in watch_inputs(lm.base, info):
            hooks.add(handle)
        for layer, vec in mapping.items():
            hook = SteerHook(vec, alpha, positions, norm_preserving, op, info)
            steer_hooks[layer] = hook
            hooks.add(lm.blocks[layer].register_forward_hook(hook))
    except BaseException:
        hooks.remove()
        raise
    return Steering(lm, hooks, steer_hooks)


def active_steer_hooks(lm: LanguageModel) -> list[SteerHook]:
    """The castlib steering hooks currently active on ``lm`` (from ``lm.interventions``), in
    the order their `Steering` handles were made."""
    return [
        hook
        for entry in lm.interventions
        if isinstance(entry, Steering)
        for hook in entry.steer_hooks.values()
    ]


@contextmanager
def override_positions(lm: LanguageModel, mask: torch.Tensor) -> Iterator[None]:
    """Within the block, active ``positions="last"`` steering hooks steer exactly where the
    ``[batch, seq]`` bool ``mask`` is true (used to score multi-token answers as generation
    would be steered: the last prompt token and every answer token)."""
    hooks = [h for h in active_steer_hooks(lm) if h.positions == "last"]
    for hook in hooks:
        hook.override = mask
    try:
        yield
    finally:
        for hook in hooks:
            hook.override = None


def installed_hooks(model: nn.Module) -> list[tuple[str, str, int]]:
    """Everything hooked into ``model``'s forward pass: ``(submodule name, kind, handle id)``
    for every forward hook and forward pre-hook of every submodule, every ``forward`` patched
    on an instance (accelerate's device-placement wrappers, marked ``_hf_hook``, excepted) and
    torch's global module hooks (name ``"<global>"``, id -1)."""
    found: list[tuple[str, str, int]] = []
    for name, module in model.named_modules():
        found += [(name, "forward hook", key) for key in module._forward_hooks]
        found += [(name, "forward pre-hook", key) for key in module._forward_pre_hooks]
        if "forward" in vars(module) and not hasattr(module, "_hf_hook"):
            found.append((name, "patched forward", -1))
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(torch_module, kind, None):
            found.append(("<global>", kind.strip("_").replace("_", " "), -1))
    return found


def foreign_hooks(lm: LanguageModel) -> list[str]:
    """`installed_hooks` of ``lm.model`` that are not castlib steering's own (the `SteerHook`
    forward hooks on blocks and the input watchers on the backbone of active `Steering`
    handles), described as ``"<module>: <kind>"``."""
    own = {
        handle.id
        for entry in lm.interventions
        if isinstance(entry, Steering)
        for handle in entry._hooks.handles
    }
    return [
        f"{name or '<model>'}: {kind}"
        for name, kind, key in installed_hooks(lm.model)
        if key == -1 or key not in own
    ]
