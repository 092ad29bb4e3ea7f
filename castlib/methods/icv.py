"""In-context vectors (Liu, Ye, Xing & Zou, ICML 2024).

From n source samples with k demonstrations each, the per-layer deltas
delta_l(x) = h_l(Pk(x; D_x)) - h_l(P0(x)) give v_l = the first principal direction of
{delta_l(x)} (sign-aligned with their mean, scaled to the mean's norm). At inference alpha * v_l
is added at every layer and every position, and each steered state is rescaled to its original
norm (norm preservation). alpha is chosen by the spec's tuning protocols; the layer grid is not
used (all layers are steered, each with the full alpha), so ICV's one slot takes the whole shared
tuning budget as alphas: ``n_configs - 1`` (default 20) geometric over ``alpha_range`` = (0.025,
0.2), plus alpha = 0, the unsteered model (`castlib.methods.steering`), as many configurations as
CAST's layers x alphas.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..analysis import first_principal_direction
from ..models import LanguageModel
from ..steer import steer
from ..tasks import Task
from .registry import register
from .steering import SteeringMethod, draw_icl_item, icl_activations, make_vector, row_keys

__all__ = ["ICV"]


@register
class ICV(SteeringMethod):
    name = "icv"

    @dataclasses.dataclass(frozen=True)
    class Params(SteeringMethod.Params):
        alpha_range: tuple[float, ...] = (0.025, 0.2)
        positions: str = "all"
        norm_preserving: bool = True
        k: int = 4
        n_samples: int = 32

    def steering(self, lm: LanguageModel, layer: int, alpha: float) -> AbstractContextManager[Any]:
        return steer(
            lm,
            self.vector,
            alpha=alpha,
            positions=self.params.positions,
            norm_preserving=self.params.norm_preserving,
        )

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        rng = random.Random(seed)
        rows = self.tuning_rows(sources, target, seed)
        items = [draw_icl_item(sources, i, p.k, rng, row_keys(rows)) for i in range(p.n_samples)]
        h_k, h_0 = icl_activations(lm, items, batch_size=p.batch_size)
        deltas = h_k - h_0
        mean = deltas.mean(0)
        vec = torch.stack(
            [
                first_principal_direction(deltas[:, layer], align_with=mean[layer])
                * mean[layer].norm()
                for layer in range(lm.n_layers)
            ]
        )
        self.vector = make_vector(lm, vec, self.name, {"k": p.k, "n_samples": p.n_samples})
        self.tune(lm, rows, slots=["all"])

    #: inherited parameters ICV does not use (it steers every layer); refused when given,
    #: skipped when shared by a notebook (`castlib.nbtools.build_method`)
    unused_params = ("layers", "layer_window")

    def check_params(self) -> None:
        super().check_params()
        if self.params.layers is not None or self.params.layer_window != 1:
            raise ValueError(
                "icv steers every layer with the full alpha: layers and layer_window are not "
                f"used (got layers={self.params.layers}, layer_window={self.params.layer_window})"
            )
