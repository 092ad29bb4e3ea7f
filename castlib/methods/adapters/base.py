"""The adapter methods' base class: training data, training, inference with the adapter and
persistence. `castlib.methods.adapters.lora` and `castlib.methods.adapters.kasa` differ only in
the adapter they build and attach.

Training data (``train_on``):
    source      the m source samples CAST selects (`cast_selection`: the same candidates, target
                queries, embeddings and `castlib.selection.select` call as `CAST` with the same
                seed and selection parameters), each with its own gold answer;
    target_dev  at most 32 labelled examples drawn (seeded) from the target's train pool.

Training: `castlib.methods.adapters.training.train_adapter` (answer-token causal-LM loss plus
the adapter's regulariser, deterministic per seed). The target's test split is never read.

Evaluation folds the adapter's weight update into the weights (``merge=True``, the default:
inference costs a plain forward pass; `castlib.methods.adapters.layers.merged_weights` restores
them exactly) or runs the adapter's layers (``merge=False``). The adapter weights are saved with
the run (``adapter.safetensors``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch

try:
    import peft  # noqa: F401 - the adapters extra; imported here so a missing one fails at once
except ImportError as err:  # pragma: no cover - exercised in a subprocess by tests/test_core.py
    raise ImportError(
        'the adapter methods (lora, kasa) need peft: pip install "castlib[adapters]"'
    ) from err

from ...models import LanguageModel
from ...selection import DEFAULT_GAMMA, SELECTION_METHODS
from ...tasks import Example, Task
from ..base import Method
from ..cast import CAST, SelectionParams
from ..tuning import MAX_TARGET_DEV, row_keys, tuning_set
from .layers import AdapterHandle, merged_weights, target_modules
from .training import train_adapter

__all__ = ["AdapterMethod", "cast_selection", "TRAIN_ON", "ADAPTER_FILE"]

TRAIN_ON = ("source", "target_dev")
ADAPTER_FILE = "adapter.safetensors"


def cast_selection(
    lm: LanguageModel,
    sources: list[Task],
    target: Task,
    seed: int,
    cast: CAST,
) -> list[tuple[Task, Example]]:
    """The m source samples ``cast`` selects when fitted with ``seed``: CAST steps 1-2 as
    `CAST._fit` runs them, its tuning rows (``cast``'s protocol and ``n_tune``, default 32)
    kept out of the candidates, so a CAST fitted with the same parameters and seed selects
    exactly these."""
    exclude = row_keys(cast.tuning_rows(sources, target, seed))
    return cast.select_samples(lm, sources, target, random.Random(seed), seed, exclude)[0]


class AdapterMethod(Method):
    """A parameter-updating method: an adapter trained on source samples or target examples."""

    @dataclasses.dataclass(frozen=True)
    class Params(SelectionParams, Method.Params):
        train_on: str = "source"
        r: int = 8
        lora_alpha: float = 16.0
        steps: int = 50
        lr: float = 1e-3
        train_batch_size: int = 8
        targets: tuple[str, ...] | None = None  # module name patterns; None: DEFAULT_TARGETS
        n_target: int = 32  # target_dev: labelled target examples (<= 32)
        # source: CAST's selection of the m training samples (`SelectionParams`), its
        # diversity weight under the name `selection_gamma` (CAST's `gamma`)
        selection_gamma: float = DEFAULT_GAMMA
        merge: bool = True  # evaluate with the adapter folded into the weights (no overhead)
        progress: bool | None = None  # tqdm bar (None: over 4 steps, `castlib.progress`)

    def check_params(self) -> None:
        p = self.params
        if p.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {p.train_on!r}")
        if p.r < 1 or p.steps < 0 or p.lr <= 0 or p.train_batch_size < 1:
            raise ValueError(f"need r >= 1, steps >= 0, lr > 0, train_batch_size >= 1 (got {p})")
        if not 1 <= p.n_target <= MAX_TARGET_DEV:
            raise ValueError(f"n_target must be in 1..{MAX_TARGET_DEV}, got {p.n_target}")
        if p.selection not in SELECTION_METHODS:
            raise ValueError(f"selection must be one of {SELECTION_METHODS}, got {p.selection!r}")
        if p.m < 1 or p.n_candidates < p.m:
            raise ValueError(f"need m >= 1 and n_candidates >= m (got {p.m}, {p.n_candidates})")

    @property
    def uses_target_labels(self) -> bool:
        return self.params.train_on == "target_dev"

    # -- to override --------------------------------------------------------------------------
    def build_adapter(self, lm: LanguageModel, names: list[str], seed: int) -> Any:
        raise NotImplementedError

    def attach(self, lm: LanguageModel) -> AdapterHandle:
        raise NotImplementedError

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def restore_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # -- training data ------------------------------------------------------------------------
    def cast(self) -> CAST:
        p = self.params
        shared = {f.name: getattr(p, f.name) for f in dataclasses.fields(SelectionParams)}
        return CAST(batch_size=p.batch_size, data_dir=p.data_dir, gamma=p.selection_gamma, **shared)

    def training_set(
        self, lm: LanguageModel, sources: list[Task], target: Task, seed: int
    ) -> list[tuple[Task, Example]]:
        if self.params.train_on == "source":
            return cast_selection(lm, sources, target, seed, self.cast())
        return tuning_set("target_dev", sources, target, self.params.n_target, seed)

    # -- protocol -----------------------------------------------------------------------------
    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        items = self.training_set(lm, sources, target, seed)
        self.names = target_modules(lm, p.targets)
        self.adapter = self.build_adapter(lm, self.names, seed)
        with self.attach(lm) as handle:
            n_params = sum(t.numel() for t in handle.parameters())
            losses = train_adapter(
                lm,
                handle,
                items,
                steps=p.steps,
                lr=p.lr,
                batch_size=p.train_batch_size,
                seed=seed,
                progress=p.progress,
                desc=self.name,
            )
        self.info.update(
            trainable_params=n_params,
            train_on=p.train_on,
            n_train=len(items),
            selected_ids=[f"{t.name}:{ex.id}" for t, ex in items],
            train_loss_first=losses[0] if losses else None,
            train_loss_last=losses[-1] if losses else None,
            target_modules=len(self.names),
        )

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        """Inference with the adapter: folded into the weights (``merge=True``; restored exactly
        on exit) or run as wrapper modules."""
        if self.params.merge:
            return merged_weights(lm.model, self.adapter.weight_deltas())

        @contextmanager
        def ctx() -> Iterator[None]:
            with self.attach(lm):
                yield

        return ctx()

    def state(self) -> dict[str, Any]:
        return {"modules": list(self.names)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.names = list(state["modules"])

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = super().save(folder)
        save_file(self.adapter_tensors(), str(folder / ADAPTER_FILE))
        return folder

    @classmethod
    def _restore(cls, folder: Path, doc: dict[str, Any]) -> Method:
        from safetensors.torch import load_file

        method = super()._restore(folder, doc)
        assert isinstance(method, AdapterMethod)
        method.restore_adapter(load_file(str(folder / ADAPTER_FILE)))
        return method
