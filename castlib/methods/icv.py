"""In-context vectors (Liu, Ye, Xing & Zou, ICML 2024), as the authors' code
(github.com/shengliu66/ICV: ``tasks/base.py`` ``obtain_icv``, ``utils/pca.py``,
``utils/llm_layers.py`` ``ICVLayer``/``add_icv_layers``) runs them.

1. Shifts. For each of ``n_samples`` source draws (task, x, D) (k demonstrations D, seeded),
   the last-token states of every block in the zero-shot and the k-shot prompt give

       delta_l(x) = h_l(Pk(x; D)) - h_l(P0(x)),   l = 0..L-1,

   and ``dH(x) = [delta_0(x); ...; delta_{L-1}(x)]``, the shifts of all layers concatenated
   into one ``L * hidden`` row (the authors read the block outputs the same way; their PCA
   also spans the embedding output's shift and then drops that slice, ``icv[1:]``; here that
   shift is exactly zero, both prompts ending on the same token, so leaving it out of the
   SVD changes nothing).
2. The in-context vector, taken jointly across layers (one SVD of ``X = [dH(x_1); ...]``,
   ``[n, L * hidden]``, not one per layer); v_l is its l-th ``hidden`` slice. ``direction``:

   ``"component_plus_mean"`` (default: what the authors' ``obtain_icv`` computes)
       the first principal component of the *centred* rows (a unit vector, its sign fixed by
       the authors' ``svd_flip`` rule: the sample whose score on the component has the largest
       magnitude gets a positive score) plus the mean row. Because the mean's norm is on the
       scale of the activations, v_l is close to the mean shift of layer l.
   ``"uncentred"`` (an ablation, this package's earlier default)
       the first right singular vector of X itself, sign-aligned with the mean row.
3. Steering, at the output of every block's MLP (the module the authors wrap:
   ``layer.mlp = Sequential(mlp, ICVLayer)``; the per-family module name is
   `castlib.architectures`' ``mlp``), at every position. With o the MLP output of one position
   and u_l = v_l / ||v_l||:

       s  = 1 + max(0, cos(o, -v_l))        (cosine of the MLP output with the negated slice)
       o' = ||o|| * unit( unit(o) + lambda * s * u_l )

   i.e. the normalised MLP output is moved by lambda (times s, up to 2 when o points against
   v_l) along u_l, and the result is rescaled to the original norm of o (their
   ``ICVLayer.forward`` with one vector, whose ``y / len(icv)`` is then ``y``). The residual
   stream receives o' in place of o. Only each slice's direction is used.
   The computation runs in float32 and the result is cast back to the activation's dtype.
4. Strength. lambda (``alpha`` in the records) is chosen by the spec's tuning protocols over
   the range the authors' code uses: 0.1 (the README's ``--lam 0.1``; the demo notebook's 0.10
   and 0.12) to 0.8 (``common.py``'s default ``--lam``), ``alpha_range = (0.1, 0.8)``:
   ``n_configs - 1`` (default 20) geometric points plus lambda = 0, the unsteered model
   (`castlib.methods.steering`), as many configurations as CAST's. The layer grid is not used
   (every layer is steered with the full lambda, as the authors do).

Remaining differences from the authors' code, and why:
(a) The pairs contrasted are the project's zero-shot and k-shot prompts of a source example
    (CAST_SPEC step 3, the same for every steering baseline); the authors contrast a
    demonstration's input with its target output (a style pair). Their demonstrations are of
    the evaluated task; here they are source-task demonstrations (cross-task transfer).
(b) lambda is chosen on held-out rows by the shared tuning protocol (``source`` or
    ``target_dev``) among 20 strengths and the unsteered model; the authors set it by hand.
(c) On the sandwich-norm families (Gemma 2/3) the steered module is the raw MLP, as the
    authors' ``find_module`` would find it (``mlp`` comes before the ``*_feedforward_layernorm``
    modules); its output then passes the post-feed-forward norm. OPT has no MLP module (the
    authors' keyword search fails there): its second feed-forward linear ``fc2`` is steered.
(d) Their ``ICVLayer`` returns ``x.half()`` (their models run in half precision or 8-bit);
    here the result takes the activation's dtype. Their hooks replace the module; here a
    forward hook on the MLP rewrites its output (the same numbers; removed on exit).
(e) Prediction is the spec's restricted scoring over the label space; the authors generate.
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
from .function_vector import mlp_module
from .registry import register
from .steering import SteeringMethod, draw_icl_item, icl_activations, make_vector
from .tuning import row_keys

__all__ = [
    "ICV",
    "DIRECTIONS",
    "ALPHA_RANGE",
    "authors_component",
    "icv_direction",
    "icv_shift",
    "icv_steering",
]

DIRECTIONS = ("component_plus_mean", "uncentred")
#: lambda from the authors' README/demo (0.1) to their argument parser's default (0.8)
ALPHA_RANGE = (0.1, 0.8)


def authors_component(flat: torch.Tensor) -> torch.Tensor:
    """The unit first principal component of the centred rows of ``flat [n, d]`` with the sign
    the authors' ``PCA`` gives it (``svd_flip``: the row whose score on the component has the
    largest magnitude scores positive); float64."""
    x = flat.double()
    u, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    return vh[0] * (-1.0 if u[int(u[:, 0].abs().argmax()), 0] < 0 else 1.0)


def icv_direction(deltas: torch.Tensor, direction: str = "component_plus_mean") -> torch.Tensor:
    """The in-context vector of per-example, per-layer shifts.

    Args:
        deltas: ``[n, n_layers, hidden]`` shifts ``delta_l(x)``.
        direction: ``"component_plus_mean"`` (the authors': `authors_component` of the
            flattened rows plus their mean row) or ``"uncentred"`` (the first right singular
            vector of the flattened rows, sign-aligned with their mean; unit norm over all
            layers). See the module docstring.

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
        vec = authors_component(flat) + mean
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
    """Forward hook of one MLP: `icv_shift` of its output at every position."""

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
    """Active ICV hooks on every block's MLP; a context manager that removes them on exit, also
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
                site = mlp_module(block)
                self.hooks.add(site.register_forward_hook(_ICVHook(unit, alpha)))
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
    """Steer ``lm`` with the in-context vector: `icv_shift` of every block's MLP output at every
    position, with lambda = ``alpha``; ``alpha = 0`` installs nothing. Use the result as a
    context manager."""
    return ICVSteering(lm, vector, check_finite_number(alpha, "icv: alpha"))


@register
class ICV(SteeringMethod):
    """ICV (see the module docstring)."""

    name = "icv"

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alpha_range: tuple[float, ...] = ALPHA_RANGE
        positions: str = "all"
        norm_preserving: bool = True
        k: int = 4
        n_samples: int = 32
        direction: str = "component_plus_mean"  # the authors'; "uncentred": the ablation

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
    #: skipped when shared by a notebook (the notebooks' `nbtools.build_method`)
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
                "icv shifts every position's MLP output and preserves its norm (Liu et al. "
                "2024): "
                f"positions='all', norm_preserving=True (got positions={p.positions!r}, "
                f"norm_preserving={p.norm_preserving!r})"
            )
        if p.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {p.direction!r}")
        if p.k < 1 or p.n_samples < 1:
            raise ValueError(
                f"need k >= 1 and n_samples >= 1 (got k={p.k}, n_samples={p.n_samples})"
            )
