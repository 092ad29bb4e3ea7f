"""LoRA fine-tuning (Hu et al., ICLR 2022) through the PEFT library: the parameter-updating
reference of CAST_SPEC "Baselines", and the shared machinery of adapter methods (`kasa`).

For each target linear module (`castlib.adapters.target_modules`: the attention query/value
projections, or the fused QKV projection) with frozen weight ``W [d_out, d_in]``,

    y = W x + b + (alpha / r) B A x,      A in R^{r x d_in},  B in R^{d_out x r},

``A`` Kaiming-uniform (``U(-1/sqrt(d_in), 1/sqrt(d_in))``, seeded), ``B = 0``. The LoRA layers are
PEFT's (``peft.LoraConfig`` + ``peft.inject_adapter_in_model``); castlib injects them only inside
``fit`` and ``applied(lm)``, copies the adapter weights in and out, and then puts the original
module objects and ``requires_grad`` flags back, so the loaded model is left exactly as found.

Training data (``train_on``):
    source      the m source samples CAST selects (`cast_selection`: the same candidates, target
                queries, embeddings and `castlib.selection.select` call as `CAST` with the same
                seed and selection parameters), each with its own gold answer;
    target_dev  at most 32 labelled examples drawn (seeded) from the target's train pool.
Loss: causal-LM negative log-likelihood of the answer tokens only, the prompt being the zero-shot
prompt of the example's own task and the target its continuation ``" " + answer``
(`castlib.adapters.train_adapter`: Adam, ``steps`` steps of ``train_batch_size`` examples, seeded
epoch permutations, model in eval mode, so deterministic per seed). The target's test split is
never read. Evaluation folds ``(alpha / r) B A`` into ``W`` (``merge=True``, the default: inference
costs a plain forward pass; `castlib.adapters.merged_weights` restores ``W`` exactly) or runs the
PEFT layers (``merge=False``). The adapter weights are saved with the run (``adapter.safetensors``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    import peft  # noqa: F401 - the adapters extra; imported here so a missing one fails at once
except ImportError as err:  # pragma: no cover - exercised in a subprocess by tests/test_core.py
    raise ImportError(
        'the adapter methods (lora, kasa) need peft: pip install "castlib[adapters]"'
    ) from err

from ..adapters import (
    AdapterHandle,
    _is_conv1d,
    freeze,
    kaiming_uniform,
    merged_weights,
    target_modules,
    train_adapter,
    weight_matrix,
)
from ..models import LanguageModel
from ..selection import DEFAULT_GAMMA, SELECTION_METHODS
from ..tasks import Example, Task
from .base import Method
from .cast import CAST, SelectionParams
from .registry import register, register_preset
from .steering import MAX_TARGET_DEV, row_keys, tuning_set

__all__ = ["AdapterMethod", "LoRA", "PeftLoraAdapter", "cast_selection", "TRAIN_ON"]

TRAIN_ON = ("source", "target_dev")
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_NAME = "castlib"


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


class PeftLoraAdapter:
    """LoRA weights for named modules, attached to a model through PEFT on demand."""

    def __init__(
        self,
        names: list[str],
        r: int,
        alpha: float,
        fan_in_fan_out: bool,
        tensors: dict[str, torch.Tensor],
    ) -> None:
        self.names = list(names)
        self.r = int(r)
        self.alpha = float(alpha)
        self.fan_in_fan_out = bool(fan_in_fan_out)
        self.tensors = tensors  # "<module>.lora_A" [r, d_in], "<module>.lora_B" [d_out, r]

    @classmethod
    def build(
        cls, model: nn.Module, names: list[str], r: int, alpha: float, seed: int
    ) -> PeftLoraAdapter:
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        modules = [model.get_submodule(n) for n in names]
        for name, module in zip(names, modules, strict=True):
            d_out, d_in = weight_matrix(module).shape
            if r > min(d_out, d_in):
                raise ValueError(f"LoRA rank r={r} exceeds the size of {name} ({d_out}x{d_in})")
            tensors[f"{name}.lora_A"] = kaiming_uniform(r, d_in, gen)
            tensors[f"{name}.lora_B"] = torch.zeros(d_out, r)
        conv = {_is_conv1d(m) for m in modules}
        if len(conv) != 1:
            raise ValueError("LoRA targets mix nn.Linear and Conv1D modules")
        return cls(names, r, alpha, conv.pop(), tensors)

    def n_trainable(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """Per module, ``(alpha / r) B A`` as a ``[d_out, d_in]`` matrix (float32)."""
        scale = self.alpha / self.r
        return {
            n: scale * (self.tensors[f"{n}.lora_B"].float() @ self.tensors[f"{n}.lora_A"].float())
            for n in self.names
        }

    def config(self) -> Any:
        import peft

        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            bias="none",
            target_modules=list(self.names),
            fan_in_fan_out=self.fan_in_fan_out,
        )

    def attach(self, model: nn.Module) -> AdapterHandle:
        """Inject PEFT LoRA layers (model frozen, LoRA weights trainable and set to
        ``self.tensors``); the handle's ``remove()`` copies the weights back into
        ``self.tensors`` and restores the original modules, flags and attributes."""
        import peft

        originals = {name: model.get_submodule(name) for name in self.names}
        for name, module in originals.items():
            w = weight_matrix(module)
            if tuple(w.shape) != (
                self.tensors[f"{name}.lora_B"].shape[0],
                self.tensors[f"{name}.lora_A"].shape[1],
            ):
                raise ValueError(
                    f"LoRA weights for {name} do not match the module's weight {tuple(w.shape)}: "
                    "the adapter was made on another model"
                )
        had_config = "peft_config" in model.__dict__
        flags = freeze(model)
        params: list[nn.Parameter] = []

        def sync_back() -> None:
            for name in self.names:
                layer = model.get_submodule(name)
                for part in ("lora_A", "lora_B"):
                    w = getattr(layer, part)[ADAPTER_NAME].weight
                    self.tensors[f"{name}.{part}"] = w.detach().float().cpu().contiguous().clone()

        attached = [False]

        def cleanup() -> None:
            try:
                if attached[0]:
                    sync_back()
            finally:
                if not had_config:
                    model.__dict__.pop("peft_config", None)

        handle = AdapterHandle(model, originals, flags, params, on_remove=cleanup)
        try:
            with torch.random.fork_rng(devices=[]):  # PEFT's own init draws are overwritten
                peft.inject_adapter_in_model(self.config(), model, adapter_name=ADAPTER_NAME)
            for name in self.names:
                layer = model.get_submodule(name)
                for part in ("lora_A", "lora_B"):
                    sub = getattr(layer, part)[ADAPTER_NAME]
                    sub.to(torch.float32)  # float32 adapter weights on half-precision models too
                    w = sub.weight
                    with torch.no_grad():
                        w.copy_(self.tensors[f"{name}.{part}"])
                    w.requires_grad_(True)
                    params.append(w)
            attached[0] = True
        except BaseException:
            handle.remove()
            raise
        return handle


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
        progress: bool | None = None  # tqdm bar (None: when stderr is a terminal)

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


@register
class LoRA(AdapterMethod):
    """LoRA through PEFT (see the module docstring)."""

    name = "lora"

    def build_adapter(self, lm: LanguageModel, names: list[str], seed: int) -> PeftLoraAdapter:
        p = self.params
        return PeftLoraAdapter.build(lm.model, names, p.r, p.lora_alpha, seed)

    def attach(self, lm: LanguageModel) -> AdapterHandle:
        return self.adapter.attach(lm.model)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.adapter.tensors)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "fan_in_fan_out": self.adapter.fan_in_fan_out}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._fan_in_fan_out = bool(state["fan_in_fan_out"])

    def restore_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        p = self.params
        self.adapter = PeftLoraAdapter(
            self.names, p.r, p.lora_alpha, self._fan_in_fan_out, dict(tensors)
        )


register_preset("lora_source", "lora", train_on="source")
register_preset("lora_target_dev", "lora", train_on="target_dev")
