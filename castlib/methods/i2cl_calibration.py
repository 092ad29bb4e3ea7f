"""I2CL's noisy self-calibration (`castlib.methods.i2cl`, step 4): the loop that learns the
injection coefficients with the model frozen, the authors' warm-up-then-cosine schedule, and
the per-epoch checkpoint a stored fit resumes from after an interruption."""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..models import LanguageModel
from ..padding import encode, pad, position_ids_from_mask
from ..progress import shown
from ..prompts import zero_shot
from ..scoring.logprobs import answer_token_ids
from ..tasks import Example, Task
from .i2cl_injection import SITES, I2CLInjection

__all__ = ["calibrate", "lr_factor"]


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
    (`castlib.methods.fit_store.FitStore.scratch`; none without one). Restoring it and going on gives
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


def calibrate(
    lm: LanguageModel,
    calib: list[tuple[Task, Example]],
    context: torch.Tensor,
    init: torch.Tensor,
    params: Any,
    seed: int,
    scratch: Path | None = None,
    name: str = "i2cl",
) -> tuple[torch.Tensor, int, list[float], tuple[int, float] | None]:
    """Noisy self-calibration of the coefficients on ``calib`` (each row a zero-shot query
    under its own task's prompt, the loss the cross-entropy of its gold answer's first token),
    with the injection of ``context`` and the I2CL ``params`` (epochs, steps, lr, ...). Returns
    the learned ``coef``, the number of optimiser steps, the mean loss of each epoch, and
    ``(step, seconds)`` when it resumed from a checkpoint in ``scratch`` (else None)."""
    p = params
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
    checkpoint = _Checkpoint(scratch, total, len(prompts))
    start = checkpoint.restore(cal)
    with (
        I2CLInjection(lm, coef, context, p.noise_scale, cal.noise_gen),
        torch.enable_grad(),
    ):
        for step in tqdm(
            range(start, total),
            desc=name,
            disable=not shown(p.progress, total - start),
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
    resumed = (start, checkpoint.seconds_before) if start else None
    return coef.detach().float().cpu(), total, [sum(e) / len(e) for e in losses], resumed
