"""I2CL: implicit in-context learning (Li, Xu, Han, Gao, Wen, Liu, Wang & Metaxas, ICLR 2025),
as the paper and the authors' code (github.com/LzVv123456/I2CL, ``configs/config_i2cl.py``,
``wrapper.py``) define it.

1. Demonstrations. ``demos_per_class`` (the authors' ``shot_per_class``: 5) labelled examples
   of every label of every source task, stratified and seeded, outside the rows the unsteered
   choice is made on (6); ``n_demos=N`` instead draws N in total, dealt over the sources and,
   within a source, over its labels (stratified still; a CPU-budget option). For a
   multiple-choice task the classes are the answer letters that occur as gold answers
   (`castlib.methods.labelled_rows.stratified_sample`). A label with too few rows is an error
   naming ``demos_per_class``/``n_demos``, never a silent shortfall.
2. Context vectors. Each demonstration (``{input block}\\nAnswer: {answer}``) runs on its own;
   forward hooks on every block's attention and MLP read their outputs at its last token, and
   the context vectors are their means over the demonstrations,

       c^attn_l = mean_d attn_l(d),     c^mlp_l = mean_d mlp_l(d)       (l = 0..L-1).

   The outputs read are the attention's and the MLP's contributions to the residual stream:
   the submodules' outputs (found by the names in `castlib.architectures`), except on the
   sandwich-norm families (Gemma 2/3: a block with ``pre_feedforward_layernorm`` and
   ``post_feedforward_layernorm``), where the outputs of the post-attention and
   post-feed-forward norms are what is added to the residual (the raw submodule outputs there
   are unnormalised). OPT has no MLP submodule: its second feed-forward linear ``fc2`` is used.
3. Injection, at every position of the query's zero-shot run, at the same sites: each output
   is replaced by a linear combination of the context vector and the query's own output,

       attn_l(q) <- a_l * c^attn_l + b_l * attn_l(q),    mlp_l(q) <- a'_l * c^mlp_l + b'_l * mlp_l(q),

   through forward hooks on those submodules (removed on exit, also after an exception; the
   context vectors and coefficients are cast to the activation's dtype and device inside the
   hook). The 4L coefficients ``coef[l, site, (context, query)]`` start at
   ``(init_context, init_query) = (0.1, 1.0)`` at every site, as in the paper.
4. Noisy self-calibration. Only the coefficients are trained, the model frozen: AdamW
   (``lr`` 0.01, ``weight_decay`` 1e-3), ``epochs`` (100) over the demonstrations themselves,
   each as a zero-shot query under its own task's prompt, ``train_batch_size`` (2) per step
   (``len // batch`` steps an epoch, seeded permutations); the learning rate warms up linearly
   over the first ``warmup`` (5%) of the steps, then follows a cosine decay; the loss is the
   cross-entropy of the gold answer's first token at the last position. While calibrating,
   Gaussian noise ``noise_scale * ||o|| * N(0, I)`` (0.001) is added to every injected output
   ``o`` (the paper's noise injection for robustness); none at evaluation. Under
   ``protocol="source"`` (``i2cl``, the label-free race) no target label and no target row is
   read: the fit is the same for every target, and a batch with an on-disk
   store fits it once per (sources, seed) and reloads it for the other targets
   (`castlib.fit_store`; the record then says ``fit_reused_from``). There the calibration
   also checkpoints its state after every epoch, and a fit run again after an interruption
   goes on from the last checkpoint with the uninterrupted result (``calib_resumed_at_step``
   in the record; ``fit_seconds`` counts the interrupted runs too).

5. ``protocol="target_dev"`` (``i2cl_target_dev``, the labelled-target race), after the
   authors' transfer script (``run_i2cl_transfer_learning.py``): the source fit above (reused
   from the store when ``i2cl`` ran with the same parameters) gives context vectors and
   source-calibrated coefficients; each context vector is multiplied by its source context
   coefficient (their ``prepare_inject_dicts_params``), the coefficients start again at
   ``(init_context, init_query)`` (their ``init_strength``) and are calibrated as in 4 on
   labelled *target* rows: ``demos_per_class`` of every target label (their ``shot_per_class``
   demonstrations of the target), stratified, drawn (seeded) from the target's train pool. The
   race allows ``n_target`` (<= 32) labelled target rows in all: the calibration rows and, for
   the choice (6), ``n_target`` minus their number further rows of the same pool.
6. No steering among the choices, as for every steering method: after calibration the
   injected and the unsteered model are scored zero-shot on held-out labelled rows and the
   injection is kept only when it scores strictly better (accuracy, then gold log-prob;
   `castlib.methods.labelled_rows.choose_steering`). ``source``: the ``n_tune`` held-out source
   rows every steering method tunes on; ``target_dev``: the ``n_target`` labelled target rows
   not used for calibration (at least one must remain). When the unsteered model wins, the
   record says ``steered=False`` and the method evaluates exactly as zero-shot (no hook).
   ``include_unsteered=False`` skips the choice (analyses only).

The record (``info``) carries the learned coefficients (``coefficients``: per site, the
context and query coefficient of every layer), the initial values, the demonstration ids, the
number of optimiser steps and the mean calibration loss of each epoch.

Still different from the paper and the authors' code, and why:
- ``steps`` (None: the paper's ``epochs * (len // batch)``) caps the number of optimiser steps,
  with the warm-up and cosine schedule laid over the capped length. It exists for the CPU
  budget of CI-sized notebook runs and tests only; the defaults are the paper's.
- The demonstrations are source-task examples (cross-task transfer), several source tasks
  pooled into one context vector and one calibration; the paper's demonstrations are from the
  evaluated task. Batches are drawn from one seeded permutation per epoch (the authors' code
  draws each batch from a fresh shuffle).
- The transfer (5): the authors ensemble the context vectors of several separately calibrated
  source tasks, weighted by a softmax (temperature 0.5) of the cosine between each source's
  coefficients and the target's own, keeping sources above 0.8; here the given sources are
  pooled into one fit, so the ensemble has one member of weight 1 and no target fit is needed
  to weigh it. Their target demonstrations are 5 per class of the target's train set; here
  they count against the race's <= 32 labelled target rows, with at least one row left for
  the choice (6), so a target with more than 6 labels needs a lower ``demos_per_class`` (an
  error says so).
- The choice against the unsteered model (6) is this project's, shared by every steering
  method; the authors always inject.
- On the sandwich-norm families the sites are the post-attention and post-feed-forward norms
  (see 2): their outputs, not the raw submodules', are what reaches the residual stream. The
  authors' code covers Llama and GPT layouts only, where the two coincide.
- The calibration queries carry the task instruction (the project's zero-shot prompt, the one
  the target is evaluated with); the authors' default template has none.
- Only the paper's default injection (``linear`` at all positions, every layer, both sites)
  is implemented; the code's alternatives (``add``, ``balance``, last/first/random position,
  layer subsets) are not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..hooks import HookGroup, hidden_of, with_hidden
from ..logprobs import answer_token_ids
from ..models import LanguageModel
from ..padding import encode, iter_batches, pad, position_ids_from_mask
from ..prompts import demonstration, zero_shot
from ..tasks import Example, Task
from .base import Method
from .function_vector import attention_module, mlp_module
from .labelled_rows import choose_steering, stratified_sample
from .registry import register, register_preset
from .steering import MAX_TARGET_DEV, PROTOCOLS, row_keys, tuning_set

__all__ = ["I2CL", "I2CLInjection", "context_vectors", "residual_sites", "SITES"]

CONTEXT_FILE = "context.safetensors"
#: the two injection sites of a block, in the order of ``coef``'s second axis
SITES = ("attn", "mlp")


def residual_sites(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are the attention's and the MLP's residual contributions."""
    if hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm"):
        return block.post_attention_layernorm, block.post_feedforward_layernorm
    return attention_module(block), mlp_module(block)


def context_vectors(
    lm: LanguageModel, texts: list[str], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_attn, c_mlp)``, each ``[n_layers, hidden]``: mean attention and MLP outputs at the
    last token of each text (left padding, so the last column)."""
    sums = torch.zeros(2, lm.n_layers, lm.hidden_size, dtype=torch.float64)
    shape: list[int] = []  # [batch, seq] of the current forward pass

    def make_hook(kind: int, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = hidden_of(output)
            if out.ndim == 2:  # OPT runs its feed-forward on flattened [batch * seq, hidden]
                out = out.view(*shape, -1)
            sums[kind, layer] += out[:, -1].double().sum(0).cpu()

        return hook

    ids = encode(lm.tokenizer, texts)
    with HookGroup() as hooks, torch.inference_mode():
        for layer, block in enumerate(lm.blocks):
            attn, mlp = residual_sites(block)
            hooks.add(attn.register_forward_hook(make_hook(0, layer)))
            hooks.add(mlp.register_forward_hook(make_hook(1, layer)))
        for batch in iter_batches(ids, batch_size, lm.tokenizer.pad_token_id, "left", lm.device):
            shape[:] = batch.input_ids.shape
            lm.base(**batch.model_inputs(), use_cache=False)
    mean = (sums / len(texts)).float()
    return mean[0], mean[1]


class _SiteHook:
    """``o <- coef[0] * c + coef[1] * o`` (+ noise while calibrating) on one submodule."""

    def __init__(
        self,
        coef: torch.Tensor,
        context: torch.Tensor,
        noise_scale: float,
        generator: torch.Generator | None,
    ) -> None:
        self.coef = coef  # [2] view of the (possibly trainable) coefficients
        self.context = context
        self.noise_scale = noise_scale
        self.generator = generator
        self._cast: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        out = hidden_of(output)
        key = (out.device, out.dtype)
        ctx = self._cast.get(key)
        if ctx is None:  # the context vector in the activation's dtype and device, once
            ctx = self._cast[key] = self.context.to(device=out.device, dtype=out.dtype)
        coef = self.coef.to(device=out.device, dtype=out.dtype)
        new = coef[0] * ctx + coef[1] * out
        if self.noise_scale > 0 and self.generator is not None:
            gen = self.generator
            noise = torch.randn(new.shape, generator=gen, device=gen.device).to(new)
            new = new + noise * new.detach().norm(dim=-1, keepdim=True) * self.noise_scale
        return with_hidden(output, new)


class I2CLInjection:
    """The injection hooks on every block's attention and MLP sites (`SITES`), for
    ``coef [n_layers, 2 sites, 2 (context, query)]`` and ``context [n_layers, 2 sites, hidden]``;
    a context manager that removes them on exit, also after an exception. With
    ``noise_scale > 0`` and a ``generator``, the calibration noise is added."""

    def __init__(
        self,
        lm: LanguageModel,
        coef: torch.Tensor,
        context: torch.Tensor,
        noise_scale: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        want = (lm.n_layers, len(SITES))
        if tuple(coef.shape) != (*want, 2) or tuple(context.shape) != (*want, lm.hidden_size):
            raise ValueError(
                f"i2cl: coefficients {tuple(coef.shape)} and context vectors "
                f"{tuple(context.shape)} do not fit {lm.name} ({lm.n_layers} layers, hidden "
                f"{lm.hidden_size}); refit the method on this model"
            )
        self.hooks = HookGroup()
        try:
            for layer, block in enumerate(lm.blocks):
                for s, module in enumerate(residual_sites(block)):
                    hook = _SiteHook(coef[layer, s], context[layer, s], noise_scale, generator)
                    self.hooks.add(module.register_forward_hook(hook))
        except BaseException:
            self.hooks.remove()
            raise

    def remove(self) -> None:
        self.hooks.remove()

    def __enter__(self) -> I2CLInjection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclasses.dataclass
class _Calibration:
    """Everything a calibration step changes: the coefficients, the optimiser and its schedule,
    both generators, the current epoch's order and the losses so far."""

    coef: torch.Tensor
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    order_gen: torch.Generator
    noise_gen: torch.Generator
    losses: list[list[float]] = dataclasses.field(default_factory=list)
    order: list[int] = dataclasses.field(default_factory=list)


class _Checkpoint:
    """A `_Calibration` at an epoch boundary, in a fit's scratch folder
    (`castlib.fit_store.FitStore.scratch`; none without one). Restoring it and going on gives
    what an uninterrupted calibration gives, bit for bit."""

    FILE = "i2cl_calibration.pt"

    def __init__(self, folder: Path | None, total: int, n_prompts: int) -> None:
        self.path = None if folder is None else Path(folder) / self.FILE
        self.shape = {"total": total, "n_prompts": n_prompts}
        self.seconds_before = 0.0
        self._started = time.perf_counter()

    def save(self, step: int, cal: _Calibration) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            **self.shape,
            "step": step,
            "coef": cal.coef.detach().cpu().clone(),
            "opt": cal.opt.state_dict(),
            "sched": cal.sched.state_dict(),
            "order_gen": cal.order_gen.get_state(),
            "noise_gen": cal.noise_gen.get_state(),
            "losses": [list(e) for e in cal.losses],
            "order": list(cal.order),
            "seconds": self.seconds_before + time.perf_counter() - self._started,
        }
        tmp = self.path.with_name(f"{self.FILE}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def restore(self, cal: _Calibration) -> int:
        """Load the checkpoint into ``cal``; the step to go on from (0: none, or one of
        another calibration, which is ignored)."""
        if self.path is None or not self.path.is_file():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn checkpoint: start again
            warnings.warn(
                f"i2cl: checkpoint {self.path} unreadable ({err}); starting again", stacklevel=2
            )
            return 0
        if any(state.get(k) != v for k, v in self.shape.items()):
            return 0
        with torch.no_grad():
            cal.coef.copy_(state["coef"].to(cal.coef.device))
        cal.opt.load_state_dict(state["opt"])
        cal.sched.load_state_dict(state["sched"])
        cal.order_gen.set_state(state["order_gen"])
        cal.noise_gen.set_state(state["noise_gen"])
        cal.losses[:] = [list(e) for e in state["losses"]]
        cal.order[:] = list(state["order"])
        self.seconds_before = float(state["seconds"])
        return int(state["step"])


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The authors' schedule: linear warm-up over ``warmup`` steps, then cosine decay
    ``(1 + cos(pi * step / total)) / 2`` over the whole run."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


@register
class I2CL(Method):
    """I2CL (see the module docstring)."""

    name = "i2cl"

    @property  # type: ignore[override]
    def fit_reads_target(self) -> bool:
        """``source``: the fit reads the source tasks only, so a batch fits it once per
        (sources, seed) and reuses it for every target (`castlib.fit_store`)."""
        return self.params.protocol == "target_dev"

    @property
    def uses_target_labels(self) -> bool:
        return self.params.protocol == "target_dev"

    @dataclasses.dataclass(frozen=True)
    class Params(Method.Params):
        demos_per_class: int = 5
        n_demos: int | None = None  # None: demos_per_class per label of every source task
        epochs: int = 100
        steps: int | None = None  # cap on optimiser steps (CPU budget); None: the paper's
        lr: float = 0.01
        weight_decay: float = 1e-3
        train_batch_size: int = 2
        warmup: float = 0.05  # fraction of the steps with a linear warm-up
        init_context: float = 0.1
        init_query: float = 1.0
        noise_scale: float = 0.001
        protocol: str = "source"  # or "target_dev": calibrated on labelled target rows
        n_tune: int = 32  # source: held-out source rows for the choice against no steering
        n_target: int = 32  # target_dev: labelled target rows (<= 32), calibration + choice
        include_unsteered: bool = True  # the unsteered model among the choices (6)
        progress: bool | None = None  # tqdm bar (None: when stderr is a terminal)

    def check_params(self) -> None:
        p = self.params
        if p.demos_per_class < 1 or (p.n_demos is not None and p.n_demos < 1):
            raise ValueError(
                f"need demos_per_class >= 1 and n_demos None or >= 1 (got {p.demos_per_class}, "
                f"{p.n_demos})"
            )
        if p.epochs < 1 or (p.steps is not None and p.steps < 0) or p.train_batch_size < 1:
            raise ValueError(
                f"need epochs >= 1, steps None or >= 0, train_batch_size >= 1 (got {p.epochs}, "
                f"{p.steps}, {p.train_batch_size})"
            )
        if not p.lr > 0 or not p.weight_decay >= 0 or not p.noise_scale >= 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, noise_scale >= 0 (got {p.lr}, "
                f"{p.weight_decay}, {p.noise_scale})"
            )
        if not 0 <= p.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {p.warmup}")
        if not (math.isfinite(p.init_context) and math.isfinite(p.init_query)):
            raise ValueError("init_context and init_query must be finite")
        if p.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {p.protocol!r}")
        if p.n_tune < 1 or not 1 <= p.n_target <= MAX_TARGET_DEV:
            raise ValueError(
                f"need n_tune >= 1 and n_target in 1..{MAX_TARGET_DEV} (got n_tune={p.n_tune}, "
                f"n_target={p.n_target})"
            )

    # -- fitting ----------------------------------------------------------------------------
    def _demonstrations(
        self, sources: list[Task], rng: random.Random, exclude: set[str]
    ) -> list[tuple[Task, Example]]:
        """The source demonstrations (module docstring, 1), none of them in ``exclude``."""
        p = self.params
        demos: list[tuple[Task, Example]] = []
        for i, task in enumerate(sources):
            pool = [ex for ex in task.train if f"{task.name}:{ex.id}" not in exclude]
            total = None
            if p.n_demos is not None:
                total = p.n_demos // len(sources) + (i < p.n_demos % len(sources))
                if total == 0:
                    raise ValueError(
                        f"i2cl: n_demos={p.n_demos} demonstrations leave none for source task "
                        f"{task.name} ({len(sources)} source tasks); raise n_demos"
                    )
            param = "demos_per_class" if total is None else "n_demos"
            picks = stratified_sample(
                task,
                pool,
                rng,
                per_class=p.demos_per_class if total is None else None,
                total=total,
                param=f"i2cl: {param}",
                where=f"the train pool of source task {task.name} (demonstrations, besides the "
                f"{len(task.train) - len(pool)} held-out tuning rows)",
            )
            demos += [(task, ex) for ex in picks]
        return demos

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        p = self.params
        if p.protocol == "target_dev":
            self._fit_target_dev(lm, sources, target, seed)
            return
        choice = (
            tuning_set("source", sources, target, p.n_tune, seed) if p.include_unsteered else []
        )
        demos = self._demonstrations(sources, random.Random(seed), row_keys(choice))
        texts = [demonstration(task, ex) for task, ex in demos]
        c_attn, c_mlp = context_vectors(lm, texts, p.batch_size)
        self.context = torch.stack([c_attn, c_mlp], dim=1)  # [L, 2, hidden]
        self.info["selected_ids"] = [f"{t.name}:{ex.id}" for t, ex in demos]
        self._calibrate_and_choose(lm, demos, choice, seed)

    def _fit_target_dev(
        self, lm: LanguageModel, sources: list[Task], target: Task, seed: int
    ) -> None:
        """The authors' transfer (module docstring, 5): the source fit's context vectors, each
        scaled by its source context coefficient, then a calibration on labelled target rows."""
        p = self.params
        rng = random.Random(seed)
        pool = list(target.train)
        param = "demos_per_class" if p.n_demos is None else "n_demos"
        calib = stratified_sample(
            target,
            pool,
            rng,
            per_class=p.demos_per_class if p.n_demos is None else None,
            total=p.n_demos,
            param=f"i2cl_target_dev: {param}",
            where=f"the train pool of target {target.name}",
        )
        room = p.n_target - len(calib)  # labelled rows left for the choice (6)
        if room < (1 if p.include_unsteered else 0):
            raise ValueError(
                f"i2cl_target_dev: {param}={getattr(p, param)} gives {len(calib)} calibration "
                f"rows over the {len(target.labels)} labels of {target.name}, and n_target="
                f"{p.n_target} allows {p.n_target} labelled target rows in all, with at least "
                f"one left to choose between I2CL and the unsteered model; lower {param} or "
                f"raise n_target (<= {MAX_TARGET_DEV})"
            )
        used = {ex.id for ex in calib}
        rest = [ex for ex in pool if ex.id not in used]
        picks = rng.sample(rest, min(room, len(rest))) if p.include_unsteered else []
        choice = [(target, ex) for ex in picks]
        if p.include_unsteered and not choice:
            raise ValueError(
                f"i2cl_target_dev: target {target.name} has no labelled train row besides the "
                f"{len(calib)} calibration rows to choose between I2CL and the unsteered model"
            )
        params = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
        source = I2CL(**{**params, "protocol": "source"}).fit(lm, sources, target, seed)
        assert isinstance(source, I2CL)
        self.context = source.context * source.coef[:, :, :1]  # their prepare_inject_dicts_params
        self.info.update(
            selected_ids=source.info["selected_ids"],
            source_coefficients=source.info["coefficients"],
            source_calib_loss_last=source.info["calib_loss_last"],
            source_fit_reused_from=source.info.get("fit_reused_from"),
        )
        self._calibrate_and_choose(lm, [(target, ex) for ex in calib], choice, seed)

    def _calibrate_and_choose(
        self,
        lm: LanguageModel,
        calib: list[tuple[Task, Example]],
        choice: list[tuple[Task, Example]],
        seed: int,
    ) -> None:
        """Calibrate the coefficients on ``calib`` (module docstring, 4), then choose between
        the injection and the unsteered model on ``choice`` (6; none: keep the injection)."""
        p = self.params
        init = torch.tensor([p.init_context, p.init_query])
        self.coef, steps, epoch_losses = self._calibrate(lm, calib, init, seed)
        self.info.update(
            layer="all",
            protocol=p.protocol,
            trainable_params=int(self.coef.numel()),
            calib_ids=[f"{t.name}:{ex.id}" for t, ex in calib],
            coefficients=self.coefficients(),
            coef_init={"context": p.init_context, "query": p.init_query},
            calib_steps=steps,
            calib_epoch_losses=[round(x, 6) for x in epoch_losses],
            calib_loss_first=epoch_losses[0] if epoch_losses else None,
            calib_loss_last=epoch_losses[-1] if epoch_losses else None,
        )
        if not choice:
            self.info.update(steered=True, choice_grid=None, tuning_ids=[])
            return
        self.info.update(
            choose_steering(lm, choice, lambda: self.injection(lm), p.batch_size),
            tuning_ids=[f"{t.name}:{ex.id}" for t, ex in choice],
        )

    def _calibrate(
        self,
        lm: LanguageModel,
        calib: list[tuple[Task, Example]],
        init: torch.Tensor,
        seed: int,
    ) -> tuple[torch.Tensor, int, list[float]]:
        """Noisy self-calibration of the coefficients (module docstring, step 4); returns the
        learned ``coef``, the number of optimiser steps and the mean loss of each epoch."""
        p = self.params
        prompts = encode(lm.tokenizer, [zero_shot(task, ex) for task, ex in calib])
        gold = [answer_token_ids(lm.tokenizer, [t.answer(ex)])[0][0] for t, ex in calib]
        coef = init.repeat(lm.n_layers, len(SITES), 1).to(lm.device).requires_grad_(True)
        bs = min(p.train_batch_size, len(prompts))
        per_epoch = len(prompts) // bs
        total = p.epochs * per_epoch if p.steps is None else min(p.steps, p.epochs * per_epoch)
        warmup = int(p.warmup * total)
        opt = torch.optim.AdamW([coef], lr=p.lr, weight_decay=p.weight_decay)
        cal = _Calibration(
            coef=coef,
            opt=opt,
            sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup)),
            order_gen=torch.Generator().manual_seed(seed),
            noise_gen=torch.Generator(device=lm.device).manual_seed(seed),
        )
        losses, order = cal.losses, cal.order
        quiet = None if p.progress is None else not p.progress
        checkpoint = _Checkpoint(self.fit_scratch, total, len(prompts))
        start = checkpoint.restore(cal)
        if start:
            self.info["calib_resumed_at_step"] = start
            self.info["resumed_seconds"] = checkpoint.seconds_before
        with (
            I2CLInjection(lm, coef, self.context, p.noise_scale, cal.noise_gen),
            torch.enable_grad(),
        ):
            for step in tqdm(
                range(start, total),
                desc=self.name,
                disable=quiet,
                leave=False,
                initial=start,
                total=total,
            ):
                if step % per_epoch == 0:
                    if step > start:  # an epoch ended: keep where calibration stands
                        checkpoint.save(step, cal)
                    order[:] = torch.randperm(len(prompts), generator=cal.order_gen).tolist()
                    losses.append([])
                idx = order[(step % per_epoch) * bs : (step % per_epoch + 1) * bs]
                ids, mask = pad([prompts[i] for i in idx], lm.tokenizer.pad_token_id, "left")
                ids, mask = ids.to(lm.device), mask.to(lm.device)
                logits = lm.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    use_cache=False,
                    logits_to_keep=1,
                ).logits[:, -1]
                target = torch.as_tensor([gold[i] for i in idx], device=logits.device)
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                (grad,) = torch.autograd.grad(loss, [coef])  # the model's weights get no grad
                coef.grad = grad
                opt.step()
                cal.sched.step()
                coef.grad = None
                losses[-1].append(float(loss.detach()))
        return coef.detach().float().cpu(), total, [sum(e) / len(e) for e in losses]

    def coefficients(self) -> dict[str, dict[str, list[float]]]:
        """The learned coefficients, ``{site: {"context": [L], "query": [L]}}``."""
        return {
            site: {
                term: [round(float(x), 8) for x in self.coef[:, s, t]]
                for t, term in enumerate(("context", "query"))
            }
            for s, site in enumerate(SITES)
        }

    # -- evaluation and persistence ---------------------------------------------------------
    def injection(self, lm: LanguageModel) -> I2CLInjection:
        """The fitted injection, whatever the choice (6)."""
        return I2CLInjection(lm, self.coef, self.context)

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        if not self.info.get("steered", True):  # the unsteered model won: no hook at all
            return nullcontext()
        return self.injection(lm)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = super().save(folder)
        tensors = {"context": self.context, "coef": self.coef}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / CONTEXT_FILE))
        return folder

    @classmethod
    def _restore(cls, folder: Path, doc: dict[str, Any]) -> Method:
        from safetensors.torch import load_file

        method = super()._restore(folder, doc)
        assert isinstance(method, I2CL)
        path = folder / CONTEXT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"i2cl needs its context vectors and coefficients: {path}")
        tensors = load_file(str(path))
        method.context, method.coef = tensors["context"], tensors["coef"]
        return method


register_preset("i2cl_target_dev", "i2cl", protocol="target_dev")
