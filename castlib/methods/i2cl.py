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
   (`castlib.methods.fit_store`; the record then says ``fit_reused_from``). There the calibration
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
  to weigh it. Their source context vectors and coefficients are averages over their 5 runs
  (seeds) of each source; here the source fit of the same seed is used. Their target demonstrations are 5 per class of the target's train set; here
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
import random
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from ..models import LanguageModel
from ..prompts import demonstration
from ..tasks import Example, Task
from .base import Method
from .i2cl_calibration import calibrate, lr_factor
from .i2cl_injection import SITES, I2CLInjection, context_vectors, residual_sites
from .labelled_rows import choose_steering, stratified_sample
from .registry import register, register_preset
from .tuning import MAX_TARGET_DEV, PROTOCOLS, row_keys, tuning_set

__all__ = [
    "I2CL",
    "I2CLInjection",
    "context_vectors",
    "residual_sites",
    "lr_factor",
    "SITES",
]

CONTEXT_FILE = "context.safetensors"


@register
class I2CL(Method):
    """I2CL (see the module docstring)."""

    name = "i2cl"

    @property  # type: ignore[override]
    def fit_reads_target(self) -> bool:
        """``source``: the fit reads the source tasks only, so a batch fits it once per
        (sources, seed) and reuses it for every target (`castlib.methods.fit_store`)."""
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
        progress: bool | None = None  # tqdm bar (None: over 4 steps, `castlib.progress`)

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
        """`calibrate` on ``calib`` with this fit's context vectors and parameters."""
        coef, total, losses, resumed = calibrate(
            lm, calib, self.context, init, self.params, seed, self.fit_scratch, self.name
        )
        if resumed is not None:
            self.info["calib_resumed_at_step"], self.info["resumed_seconds"] = resumed
        return coef, total, losses

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
