"""Benchmark section ``sweep``: steering sweeps through cached prefixes vs the full path.

Every number is measured in one run on one loaded model, so only the ratios mean anything:

- ``steered_cached_vs_zero_shot``: the marginal cost of one more steered configuration in
  `castlib.evaluate_sweep` (``(t(G configs) - t(1 config)) / (G - 1)``) over one
  zero-shot `castlib.evaluate` of the same rows (goal <= 0.1);
- ``grid_cached_speedup``: G configurations scored one by one in full (``with steer(...):
  evaluate(...)``) over the same G in one `evaluate_sweep`;
- ``cast_fit_eval_speedup`` (section ``castfit``, `bench_cast_fit`): CAST fitted with its full
  tuning grid plus its test evaluation, on the path of commit 577608b (``scoring="full"``, no
  activation store) over the fast path (``scoring="auto"``, a fresh in-memory activation store),
  same seed and rows (goal >= 4); in wall seconds and in CPU seconds of this process (with one
  torch thread, CPU time is what other jobs on the machine inflate least), each split into fit
  and test evaluation;
- ``cast_fit_eval_speedup_warm_store``: the same old path over a second fast-path fit and
  evaluation that finds the first one's recordings in the store (what a batch pays for the
  second CAST-family fit of a run on the same sources, e.g. ``cast_target_dev`` after ``cast``,
  or for a rerun): the tuning sweep and the test evaluation are run again, the recordings not;
- the sweep's peak memory (`castlib.profiling.profile`), and bf16-on-CPU: zero-shot time and
  prediction agreement against float32 on the same rows.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from castlib.activation_store import ActivationStore
from castlib.methods.cast import CAST
from castlib.methods.steering import default_layers
from castlib.models import LanguageModel, wrap_model
from castlib.profiling import profile
from castlib.scoring import evaluate, evaluate_sweep
from castlib.steer import steer
from castlib.tasks import Task, sample_examples

__all__ = ["bench_cast_fit", "bench_sweep", "SWEEP_RATIO_KEYS"]

SWEEP_RATIO_KEYS: dict[str, tuple[str | None, str]] = {
    "steered_cached_vs_zero_shot": (
        "<= 0.1",
        "marginal seconds of one more steered configuration in evaluate_sweep / seconds of one "
        "zero-shot evaluate on the same rows",
    ),
    "grid_cached_speedup": (
        None,
        "G configurations scored in full one by one / the same G in one evaluate_sweep",
    ),
    "cast_fit_eval_speedup": (
        ">= 4",
        "CAST fit (full tuning grid) + test evaluation: scoring='full' without an activation "
        "store (the path of 577608b) / scoring='auto' with a fresh store",
    ),
    "cast_fit_eval_speedup_cpu": (
        ">= 4",
        "the same CAST comparison in CPU seconds of the benchmark's process",
    ),
    "cast_fit_eval_speedup_warm_store": (
        None,
        "the same old path / a second scoring='auto' fit + evaluation whose recordings are "
        "already in the store (the second CAST-family fit of a batch run on the same sources)",
    ),
}


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_sweep(
    lm: LanguageModel,
    source: Task,
    target: Task,
    vector: Any,
    n: int,
    batch_size: int,
    seed: int = 0,
    bf16: bool = True,
) -> dict[str, Any]:
    """The ``sweep`` section (see the module docstring; without the CAST comparison, which is
    the ``castfit`` section, `bench_cast_fit`)."""
    rows = sample_examples(target.test, n, seed)
    layers = default_layers(lm.n_layers)
    alphas = (0.25, 0.5, 1.0, 2.0)
    configs = [
        (lambda layer=layer, alpha=alpha: steer(lm, vector, alpha=alpha, layers=[layer]))
        for layer in layers
        for alpha in alphas
    ]
    zero, t_zero = _timed(lambda: evaluate(lm, target, examples=rows, batch_size=batch_size))
    _, t_one = _timed(
        lambda: evaluate_sweep(lm, target, configs[:1], examples=rows, batch_size=batch_size)
    )
    with profile(lm.device, settle=True) as prof:
        swept = evaluate_sweep(lm, target, configs, examples=rows, batch_size=batch_size)
    t_grid = prof.seconds
    full = []
    start = time.perf_counter()
    for config in configs:
        with config():
            full.append(evaluate(lm, target, examples=rows, batch_size=batch_size))
    t_full_grid = time.perf_counter() - start
    agree = sum(
        a["pred"] == b["pred"]
        for s, f in zip(swept, full, strict=True)
        for a, b in zip(s.predictions, f.predictions, strict=True)
    ) / (len(configs) * len(rows))
    marginal = (t_grid - t_one) / (len(configs) - 1)
    out: dict[str, Any] = {
        "n": len(rows),
        "configs": len(configs),
        "layers": layers,
        "alphas": list(alphas),
        "zero_shot_s": t_zero,
        "sweep_one_config_s": t_one,
        "sweep_all_configs_s": t_grid,
        "full_all_configs_s": t_full_grid,
        "sweep_peak_memory_mb": prof.peak_mb,
        "sweep_memory_growth_mb": prof.growth_mb,
        "memory_method": prof.method,
        "cached_vs_full_prediction_agreement": agree,
        "steered_cached_vs_zero_shot": marginal / t_zero,
        "grid_cached_speedup": t_full_grid / t_grid,
        "zero_shot_accuracy": zero.accuracy,
    }
    if bf16:
        model = copy.deepcopy(lm.model).to(torch.bfloat16)
        half = wrap_model(model, lm.tokenizer, name=lm.name, blocks_path=lm.blocks_path)
        low, t_low = _timed(lambda: evaluate(half, target, examples=rows, batch_size=batch_size))
        same = sum(
            a["pred"] == b["pred"] for a, b in zip(low.predictions, zero.predictions, strict=True)
        )
        out.update(
            bf16_zero_shot_s=t_low,
            bf16_vs_fp32_time=t_low / t_zero,
            bf16_prediction_agreement=same / len(rows),
            bf16_accuracy=low.accuracy,
        )
        del half
    return out


def bench_cast_fit(
    lm: LanguageModel,
    source: Task,
    target: Task,
    n: int,
    batch_size: int,
    cast_params: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """The ``castfit`` section: CAST's fit (full tuning grid) plus its evaluation on ``n`` seeded
    test rows, old path (``scoring="full"``, no store), then fast path (``scoring="auto"``, a
    fresh `ActivationStore`), then the fast path again with the store the first fast fit filled
    (``warm``), each timed in wall and process CPU seconds, fit and evaluation apart. Ratios:
    ``cast_fit_eval_speedup`` (wall), ``cast_fit_eval_speedup_cpu`` and
    ``cast_fit_eval_speedup_warm_store`` (wall, old / warm)."""
    out: dict[str, Any] = {"n": n, "cast_params": cast_params}
    records: dict[str, dict[str, Any]] = {}
    saved_store = lm.activation_store
    try:
        store = ActivationStore()
        legs = (("full", "full", None), ("fast", "auto", store), ("warm", "auto", store))
        for name, scoring, store in legs:
            lm.activation_store = store
            method = CAST(**cast_params, scoring=scoring, batch_size=batch_size)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            method.fit(lm, [source], target, seed=seed)
            wall1, cpu1 = time.perf_counter(), time.process_time()
            records[name] = method.evaluate(lm, target, sample=n, sample_seed=seed)
            wall2, cpu2 = time.perf_counter(), time.process_time()
            out.update(
                {
                    f"cast_{name}_path_s": wall2 - wall0,
                    f"cast_{name}_path_cpu_s": cpu2 - cpu0,
                    f"cast_{name}_fit_cpu_s": cpu1 - cpu0,
                    f"cast_{name}_eval_cpu_s": cpu2 - cpu1,
                    f"cast_{name}_fit_s": wall1 - wall0,
                    f"cast_{name}_eval_s": wall2 - wall1,
                }
            )
    finally:
        lm.activation_store = saved_store
    out.update(
        cast_fit_eval_speedup=out["cast_full_path_s"] / out["cast_fast_path_s"],
        cast_fit_eval_speedup_cpu=out["cast_full_path_cpu_s"] / out["cast_fast_path_cpu_s"],
        cast_fit_eval_speedup_warm_store=out["cast_full_path_s"] / out["cast_warm_path_s"],
        cast_same_choice=len({(r["layer"], r["alpha"]) for r in records.values()}) == 1,
        cast_accuracy={k: r["accuracy"] for k, r in records.items()},
    )
    return out
