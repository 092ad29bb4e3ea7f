"""In-context vectors (Liu, Ye, Xing & Zou, ICML 2024), as the paper and the authors' code
(github.com/shengliu66/ICV) define them.

1. Shifts. For each of ``n_samples`` source draws (task, x, D) (k demonstrations D, seeded),
   the last-token states of every block in the zero-shot and the k-shot prompt give

       delta_l(x) = h_l(Pk(x; D)) - h_l(P0(x)),   l = 0..L-1,

   and ``dH(x) = [delta_0(x); ...; delta_{L-1}(x)]``, the shifts of all layers concatenated
   into one ``L * hidden`` row (the paper concatenates the latent states of all layers).
   The paper contrasts a demonstration's input with its target output; here the contrast is
   the project's ICL shift (CAST_SPEC step 3), the same for every steering baseline.
2. The in-context vector is the first principal direction of the stacked rows
   ``X = [dH(x_1); ...; dH(x_n)]``, taken jointly across layers (one SVD of ``[n, L * hidden]``,
   not one per layer); v_l is its l-th ``hidden`` slice. ``direction`` chooses how:

   ``"uncentred"`` (default)
       the first right singular vector of X itself (no mean subtracted), sign-aligned with
       the mean row. Its direction maximises the second moment ``sum_x <dH(x), u>^2``, so when
       the shifts share a strong common component it follows their mean; it is a direction,
       free of units.
   ``"component_plus_mean"``
       what the authors' code computes: the first principal component of the *centred* rows
       (a unit vector) plus the mean row. The component's sign is aligned with the mean here
       (the authors' code fixes it by an ``svd_flip`` rule, arbitrary with respect to the mean).

   The default is the uncentred direction because the paper names the top principal direction
   of the dH rows as the vector, and it does not depend on the scale of the hidden states: in
   component-plus-mean a unit vector is added to the mean shift, whose norm is on the scale of
   the model's activations, so on most models the sum is the mean up to a small tilt.
3. Steering, at every block and every position, on the block output h (the residual stream
   the shifts were read from), following the authors' ``ICVLayer``:

       s   = 1 + max(0, cos(h, -v_l))
       h' = ||h|| * unit( unit(h) + alpha * s * unit(v_l) )

   i.e. the normalised state is moved by ``alpha`` (times s, up to 2 when h points against
   v_l) along the unit vector v_l/||v_l||, and the result is rescaled to the original norm of h
   (the paper's norm preservation). Only each slice's direction is used: the per-layer norms of
   the joint direction do not matter. alpha is chosen by the spec's tuning protocols (the paper
   tunes its strength lambda by hand); the layer grid is not used (all layers are steered, each
   with the full alpha), so ICV's one slot takes the whole shared tuning budget as alphas:
   ``n_configs - 1`` (default 20) geometric over ``alpha_range`` = (0.025, 0.2), plus alpha = 0,
   the unsteered model (`castlib.methods.steering`), as many configurations as CAST's.
   The computation runs in float32 and the result is cast back to the activation's dtype.

Differences from the authors' code, and why: (a) the shift is written at the block output,
where it was read and where the paper places it (the latent states), not at the MLP output
(their ``ICVLayer`` wraps each block's MLP); castlib reads and writes the residual stream at
one site for every method. Rotating the whole state is a stronger step than rotating an MLP
output by the same amount, so alpha is not on the scale of their lambda. (b) The default direction is the uncentred one (see 2). (c) The
demonstration pairs are the project's zero-shot/k-shot prompts (see 1).
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ..analysis import first_principal_direction
from ..hooks import HookGroup, hidden_of, with_hidden
from ..models import LanguageModel
from ..tasks import Task
from ..validate import check_finite_number
from ..vectors import SteeringVector
from .registry import register
from .steering import SteeringMethod, draw_icl_item, icl_activations, make_vector
from .tuning import row_keys

__all__ = ["ICV", "DIRECTIONS", "icv_direction", "icv_shift", "icv_steering"]

DIRECTIONS = ("uncentred", "component_plus_mean")


def icv_direction(deltas: torch.Tensor, direction: str = "uncentred") -> torch.Tensor:
    """The in-context vector of per-example, per-layer shifts.

    Args:
        deltas: ``[n, n_layers, hidden]`` shifts ``delta_l(x)``.
        direction: ``"uncentred"`` (the first right singular vector of the flattened rows,
            sign-aligned with their mean; unit norm over all layers) or
            ``"component_plus_mean"`` (the unit first principal component of the centred rows,
            sign-aligned with the mean, plus the mean row). See the module docstring.

    Returns:
        float32 ``[n_layers, hidden]``: the joint direction cut into per-layer slices.

    Raises:
        ValueError: bad shape or ``direction``, non-finite values, or shifts that are all zero.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not isinstance(deltas, torch.Tensor) or deltas.ndim != 3 or deltas.shape[0] < 1:
        shape = tuple(deltas.shape) if isinstance(deltas, torch.Tensor) else type(deltas).__name__
        raise ValueError(f"deltas must be a [n >= 1, n_layers, hidden] tensor, got {shape}")
    n, n_layers, hidden = deltas.shape
    flat = deltas.reshape(n, n_layers * hidden).double()
    mean = flat.mean(0)
    if direction == "uncentred":
        vec = first_principal_direction(flat, align_with=mean, center=False)
    elif n < 2 or not (flat - mean).abs().max() > 0:  # no spread: no component, the mean only
        vec = mean
    else:
        vec = first_principal_direction(flat, align_with=mean, center=True) + mean
    return vec.reshape(n_layers, hidden).float()


def icv_shift(hidden: torch.Tensor, unit: torch.Tensor, alpha: float) -> torch.Tensor:
    """The authors' steered state ``||h|| * unit(unit(h) + alpha * s * unit_v)``, with
    ``s = 1 + max(0, cos(h, -unit_v))``, for every row of ``hidden [..., d]``; ``unit`` is the
    unit vector ``v_l / ||v_l||`` (or zero: then ``h`` comes back unchanged up to rounding).
    Computed in float32, returned in ``hidden``'s dtype; the norm of each row is preserved."""
    x = hidden.float()
    u = unit.to(device=x.device, dtype=torch.float32)
    norm = x.norm(dim=-1, keepdim=True)
    x_unit = x / norm.clamp_min(1e-12)
    s = 1.0 + (-(x_unit @ u)).clamp_min(0.0)[..., None]
    y = x_unit + alpha * s * u
    return (y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm).to(hidden.dtype)


class _ICVHook:
    """Forward hook of one block: `icv_shift` at every position."""

    def __init__(self, unit: torch.Tensor, alpha: float) -> None:
        self.unit = unit
        self.alpha = alpha
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = hidden_of(output)
        unit = self._on.get(hidden.device)
        if unit is None:  # moved to the activation's device once, inside the hook
            unit = self._on[hidden.device] = self.unit.to(hidden.device)
        return with_hidden(output, icv_shift(hidden, unit, self.alpha))


class ICVSteering:
    """Active ICV hooks on every block; a context manager that removes them on exit, also
    after an exception (`icv_steering`)."""

    def __init__(self, lm: LanguageModel, vector: SteeringVector, alpha: float) -> None:
        vector.check_compatible(lm)
        missing = [layer for layer in range(lm.n_layers) if layer not in vector.layers]
        if missing:
            raise ValueError(f"icv: the vector has no slice for layer(s) {missing}")
        self.hooks = HookGroup()
        if alpha == 0.0:  # the unsteered model, bit for bit
            return
        try:
            for layer, block in enumerate(lm.blocks):
                v = vector[layer].detach().float().cpu()
                norm = v.norm()
                unit = v / norm if norm > 0 else torch.zeros_like(v)
                self.hooks.add(block.register_forward_hook(_ICVHook(unit, alpha)))
        except BaseException:
            self.hooks.remove()
            raise

    def remove(self) -> None:
        self.hooks.remove()

    def __enter__(self) -> ICVSteering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def icv_steering(lm: LanguageModel, vector: SteeringVector, alpha: float) -> ICVSteering:
    """Steer ``lm`` with the in-context vector at every block and position (`icv_shift`);
    ``alpha = 0`` installs nothing. Use the result as a context manager."""
    return ICVSteering(lm, vector, check_finite_number(alpha, "icv: alpha"))


@register
class ICV(SteeringMethod):
    """ICV (see the module docstring)."""

    name = "icv"

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alpha_range: tuple[float, ...] = (0.025, 0.2)
        positions: str = "all"
        norm_preserving: bool = True
        k: int = 4
        n_samples: int = 32
        direction: str = "uncentred"  # or "component_plus_mean" (the authors' code)

    def steering(self, lm: LanguageModel, layer: int, alpha: float) -> AbstractContextManager[Any]:
        assert self.vector is not None
        return icv_steering(lm, self.vector, alpha)

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        rows = self.tuning_rows(sources, target, seed)
        items = [draw_icl_item(sources, i, p.k, rng, row_keys(rows)) for i in range(p.n_samples)]
        h_k, h_0 = icl_activations(lm, items, batch_size=p.batch_size)
        deltas = h_k - h_0
        vec = icv_direction(deltas, p.direction)
        flat = deltas.reshape(len(items), -1).double()
        mean = flat.mean(0)
        joint = vec.reshape(-1).double()
        self.vector = make_vector(
            lm, vec, self.name, {"k": p.k, "n_samples": p.n_samples, "direction": p.direction}
        )
        self.tune(lm, rows, slots=["all"])
        self.info.update(
            direction=p.direction,
            # how much of the shifts' second moment the direction carries, and its angle to
            # their mean (both over all layers jointly)
            direction_second_moment_share=float(
                (flat @ (joint / joint.norm())).square().sum() / flat.square().sum()
            ),
            direction_cos_mean=float(joint @ mean / (joint.norm() * mean.norm())),
        )
        self.record_vector_norm(lm)

    #: inherited parameters ICV does not use (it steers every layer); refused when given,
    #: skipped when shared by a notebook (`castlib.repro.nbtools.build_method`)
    unused_params = ("layers", "layer_window")

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        if p.layers is not None or p.layer_window != 1:
            raise ValueError(
                "icv steers every layer with the full alpha: layers and layer_window are not "
                f"used (got layers={p.layers}, layer_window={p.layer_window})"
            )
        if p.positions != "all" or p.norm_preserving is not True:
            raise ValueError(
                "icv shifts every position and preserves each state's norm (Liu et al. 2024): "
                f"positions='all', norm_preserving=True (got positions={p.positions!r}, "
                f"norm_preserving={p.norm_preserving!r})"
            )
        if p.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {p.direction!r}")
        if p.k < 1 or p.n_samples < 1:
            raise ValueError(
                f"need k >= 1 and n_samples >= 1 (got k={p.k}, n_samples={p.n_samples})"
            )
