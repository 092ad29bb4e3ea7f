"""Benchmarks: castlib's overheads, CAST vs in-context learning cost, and peer libraries.

    python -m benchmarks.bench --json benchmarks/results/bench.json [--quick] [--device cpu|cuda]
        [--dtype auto] [--n N] [--threads T] [--sections overheads,peers,icl,fitting,length,sweep,castfit]

Every number that matters is a *ratio of two timings taken in the same run, on the same model
and the same prompts* (financial_phrasebank queries, sst2 demonstrations from the shared data):
absolute seconds depend on the machine and its load, ratios much less. Timing protocol
(`interleaved`): each measured function runs once to warm up; then, round after round, every
function of a group runs on the same small unit of work (one batch, or one group of queries)
back to back, in alternating order (A B C, C B A, ...), unit after unit. A ratio is the median
over (round, unit) pairs of the per-pair ratio, so the two runs compared are seconds apart and a
burst of load from another process affects both; absolute times are sums over units of median
unit times. Wall-clock ratios are the headline; the overheads and peers sections also report
the same ratios in process CPU time, which other processes' load disturbs much less (a large gap
between the two means the run was noisy).

Sections (each a function usable on a tiny test model; `run_bench` runs the chosen ones):

* ``overheads`` -- on identical left-padded batches of zero-shot prompts:
  ``eval_vs_forward`` = throughput of `castlib.evaluate` / throughput of the bare
  ``lm.model(**inputs, use_cache=False, logits_to_keep=1)`` (goal >= 0.9);
  ``record_vs_forward`` = throughput of `record_activations` (all layers) / bare backbone
  ``lm.base(**inputs, use_cache=False)`` (goal >= 1.0);
  ``steer_last_overhead`` / ``steer_all_overhead`` = forward time under `castlib.steer`
  (positions="last") at 1 layer / at all layers, over the unsteered forward (goal <= 1.03).
* ``peers`` -- steering-vectors and repeng (when importable, else ``"unavailable"``; install
  them with ``benchmarks/setup_peers.sh``): steered-forward time vs castlib's on the same
  batches, vector, scale and layer, with matched position semantics; agreement of their
  recorded activations and steered logits with castlib's.
* ``icl`` -- CAST inference (zero-shot + steering) vs zero-shot vs cross-task k-shot ICL
  (k = 1, 4, 16; naive, and with the shared demonstration prefix cached by
  `castlib.scoring.prefix_cache`): prompt tokens, per-query latency, peak memory.
  ``cast_vs_zero_shot_latency``, ``icl4_vs_zero_shot_latency``, ``icl4_vs_zero_shot_tokens``.
* ``fitting`` -- the one-off cost of fitting a CAST vector vs m, through the stages of
  `castlib.methods.cast.CAST` itself: embedding the candidate pool and the target queries
  (`CAST.draw` + `CAST.embed`, zero-shot states at l_e), selection (`CAST.choose`, method
  "cast"), and extraction (`CAST.extract`: few-shot / zero-shot activations of the m selected
  samples at every layer).
* ``length`` -- per-query latency vs prompt length (64..2048 tokens): k-shot ICL with as many
  demonstrations as fit in the length, CAST at its zero-shot length, and a zero-shot input of
  that length steered and unsteered.

On CPU the bench uses one intra-op thread by default (``--threads``): on a shared machine
OpenMP worker threads that wait for a busy core make small operations (hooks, indexing) orders
of magnitude slower and the timings meaningless.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from castlib._version import __version__
from castlib.methods.cast import CAST
from castlib.models import LanguageModel
from castlib.padding import Batch, encode, iter_batches, last_token_index
from castlib.profiling import profile
from castlib.prompts import cross_task, zero_shot
from castlib.record import record_activations
from castlib.scoring import evaluate, score_prompts
from castlib.scoring.prefix_cache import (
    build_prefix_cache,
    joint_tokenisation_matches,
    score_suffixes,
    split_shared_prefix,
)
from castlib.steer import steer
from castlib.tasks import Example, Task

from .bench_sweep import SWEEP_RATIO_KEYS, bench_cast_fit, bench_sweep

__all__ = [
    "BenchConfig",
    "quick_config",
    "full_config",
    "interleaved",
    "paired_ratio",
    "run_total",
    "CastPool",
    "cast_method",
    "embed_pool",
    "fit_cast_stages",
    "bench_overheads",
    "bench_peers",
    "bench_icl",
    "bench_fitting",
    "bench_length",
    "run_bench",
    "format_table",
    "main",
]

SECTIONS = ("overheads", "peers", "icl", "fitting", "length", "sweep", "castfit")

#: The headline ratio keys, their goal (None: no goal, reported only) and definition.
RATIO_KEYS: dict[str, tuple[str | None, str]] = {
    "eval_vs_forward": (
        ">= 0.9",
        "castlib.evaluate throughput / bare lm.model(**inputs, use_cache=False, "
        "logits_to_keep=1) throughput on identical batches",
    ),
    "record_vs_forward": (
        ">= 0.99 (strict: no LM head in either)",
        "record_activations (all layers) throughput / bare lm.base(**inputs, use_cache=False) "
        "throughput on identical batches",
    ),
    "record_vs_model_forward": (
        ">= 1.0",
        "record_activations (all layers) throughput / lm.model(**inputs, use_cache=False, "
        "logits_to_keep=1) throughput (the model's own leanest forward) on identical batches",
    ),
    "steer_last_overhead": (
        "<= 1.03",
        "forward time under castlib.steer at 1 layer (positions='last') / unsteered",
    ),
    "steer_all_overhead": (
        "<= 1.03",
        "forward time under castlib.steer at all layers (positions='last') / unsteered",
    ),
    "cast_vs_zero_shot_latency": (
        None,
        "per-query latency of zero-shot + steering (1 layer) / zero-shot",
    ),
    "icl4_vs_zero_shot_latency": (
        None,
        "per-query latency of cross-task 4-shot ICL (naive) / zero-shot",
    ),
    "icl4_vs_zero_shot_tokens": (None, "prompt tokens per query, 4-shot ICL / zero-shot"),
    **SWEEP_RATIO_KEYS,
}


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Sizes of every section (see `quick_config` and `full_config`)."""

    source: str = "sst2"
    target: str = "financial_phrasebank"
    n: int = 32  # queries of the overheads section
    batch_size: int = 8
    repeats: int = 5
    warmup: int = 1
    layer: int | None = None  # steering layer l* (default L // 2)
    alpha: float = 2.0
    n_peer: int = 16
    n_latency: int = 8
    latency_batch_size: int = 1
    ks: tuple[int, ...] = (1, 4, 16)
    ms: tuple[int, ...] = (8, 16, 32, 64)
    pool: int = 128
    n_select_queries: int = 16
    k_demos: int = 4
    fitting_repeats: int = 2
    lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    n_length: int = 2
    length_repeats: int = 3
    n_sweep: int = 200  # test rows of the sweep section
    sweep_cast: tuple[tuple[str, Any], ...] = (
        ("m", 32),
        ("k", 4),
        ("n_candidates", 256),
        ("n_queries", 64),
        ("n_tune", 32),
    )
    bf16: bool = True
    seed: int = 0
    sections: tuple[str, ...] = SECTIONS
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown sections {unknown}; choose from {SECTIONS}")
        if self.n < 1 or self.batch_size < 1 or self.repeats < 1:
            raise ValueError("n, batch_size and repeats must be >= 1")


def full_config(**overrides: Any) -> BenchConfig:
    """The full run (about 20 minutes on 1 CPU thread for Gemma 3 270M)."""
    return replace(BenchConfig(), **overrides)


def quick_config(**overrides: Any) -> BenchConfig:
    """A run of a few minutes on 1 CPU thread for Gemma 3 270M."""
    base = BenchConfig(
        n=16,
        batch_size=8,
        repeats=3,
        n_peer=8,
        n_latency=4,
        ms=(4, 8),
        pool=32,
        n_select_queries=8,
        fitting_repeats=1,
        lengths=(64, 256, 1024),
        n_length=1,
        length_repeats=2,
        n_sweep=32,
        sweep_cast=(("m", 8), ("k", 2), ("n_candidates", 32), ("n_queries", 8), ("n_tune", 8)),
    )
    return replace(base, **overrides)


# ----------------------------------------------------------------------------------------------
# timing and memory
# ----------------------------------------------------------------------------------------------


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[..., object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
    desc: str | None = None,
    progress: bool = True,
    units: Sequence[Any] | None = None,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time functions in interleaved rounds, after ``warmup`` runs of each.

    Without ``units`` each function is called as ``fn()``; round r runs them in order (r even)
    or in reverse order (r odd). With ``units`` (e.g. the batches of a workload) each function
    is called as ``fn(unit)`` and every round times all functions on unit 0, then on unit 1, ...
    (order alternating with round + unit), so the runs compared in a pair are seconds apart and
    a burst of load from another process hits both. Warm-up runs use the first unit.

    Returns wall seconds ``{name: [t for round in rounds for unit in units]}`` (all lists in the
    same order, so `paired_ratio` pairs runs of the same round and unit); ``cpu_times``, when
    given, is filled the same way with this process's CPU seconds.
    """
    names = list(fns)
    unit_list: list[Any] = [None] if units is None else list(units)
    if not unit_list:
        raise ValueError("no units to time")

    def call(name: str, unit: Any) -> None:
        if units is None:
            fns[name]()
        else:
            fns[name](unit)

    for _ in range(warmup):
        for name in names:
            call(name, unit_list[0])
            _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in names})
    total = repeats * len(unit_list)
    with tqdm(total=total, desc=desc or "timing", disable=not progress, leave=False) as bar:
        for r in range(repeats):
            gc.collect()
            for u, unit in enumerate(unit_list):
                for name in names if (r + u) % 2 == 0 else names[::-1]:
                    _sync(device)
                    cpu0 = time.process_time()
                    start = time.perf_counter()
                    call(name, unit)
                    _sync(device)
                    times[name].append(time.perf_counter() - start)
                    if cpu_times is not None:
                        cpu_times[name].append(time.process_time() - cpu0)
                bar.update()
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over pairs of ``a[i] / b[i]`` (times measured in the same round and unit)."""
    return float(statistics.median(x / y for x, y in zip(a, b, strict=True)))


def run_total(times: Sequence[float], n_units: int) -> float:
    """Estimated seconds of one run over all units: the sum over units of their median time."""
    if len(times) % n_units:
        raise ValueError("times are not a whole number of rounds")
    return float(sum(statistics.median(times[u::n_units]) for u in range(n_units)))


def _median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def _peak_memory(device: torch.device, fn: Callable[[], object]) -> tuple[int | None, str]:
    """Peak memory of ``fn()`` above the level at entry, in bytes, and how it was measured
    (`castlib.profiling.profile` with 1 ms RSS sampling, after gc and malloc_trim)."""
    with profile(device, interval=0.001, settle=True) as prof:
        fn()
    return prof.growth_bytes, f"{prof.method} (delta)"


# ----------------------------------------------------------------------------------------------
# workload helpers
# ----------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One batch of a workload: its examples, prompts and the padded batch castlib makes."""

    examples: list[Example]
    prompts: list[str]
    batch: Batch


def _units(
    lm: LanguageModel, examples: Sequence[Example], prompts: Sequence[str], batch_size: int
) -> list[Unit]:
    """Split a workload into the batches ``iter_batches`` would make (sorted by length, left
    padded); calling castlib on one unit's examples builds exactly that unit's batch."""
    ids = encode(lm.tokenizer, prompts)
    pad_id = lm.tokenizer.pad_token_id
    units = []
    for batch in iter_batches(ids, batch_size, pad_id, "left", lm.device):
        units.append(
            Unit(
                examples=[examples[i] for i in batch.indices],
                prompts=[prompts[i] for i in batch.indices],
                batch=batch,
            )
        )
    return units


def _forward(lm: LanguageModel, unit: Unit) -> None:
    with torch.inference_mode():
        lm.model(**unit.batch.model_inputs(), use_cache=False, logits_to_keep=1)


def _backbone(lm: LanguageModel, unit: Unit) -> None:
    with torch.inference_mode():
        lm.base(**unit.batch.model_inputs(), use_cache=False)


def _last_logits(lm: LanguageModel, batch: Batch) -> torch.Tensor:
    with torch.inference_mode():
        out = lm.model(**batch.model_inputs(), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float().cpu()


def _n_tokens(lm: LanguageModel, prompts: Sequence[str]) -> list[int]:
    return [len(r) for r in encode(lm.tokenizer, prompts)]


def _steer_layer(lm: LanguageModel, cfg: BenchConfig) -> int:
    return lm.check_layers(cfg.layer if cfg.layer is not None else lm.n_layers // 2)[0]


@dataclass
class CastPool:
    """CAST's step-1 state for the fitting section: the drawn candidates and target queries,
    their embeddings at l_e, and the random state after the draws (what `CAST._fit` continues
    with)."""

    candidates: list[tuple[Task, Example]]
    queries: list[Example]
    cand_h: torch.Tensor
    query_h: torch.Tensor | None
    rng_state: object


def cast_method(
    m: int, pool: int, n_queries: int, k_demos: int, batch_size: int, seed: int = 0
) -> CAST:
    """The `castlib.methods.cast.CAST` whose fitting stages the bench times (mean contrast,
    ``selection="cast"``, ``pool`` candidates, ``n_queries`` target queries)."""
    return CAST(m=m, k=k_demos, n_candidates=pool, n_queries=n_queries, batch_size=batch_size)


def embed_pool(
    lm: LanguageModel, cast: CAST, source: Task, target: Task, seed: int = 0
) -> CastPool:
    """CAST step 1 (`CAST.draw` with ``random.Random(seed)`` and `CAST.embed`)."""
    rng = random.Random(seed)
    candidates, queries = cast.draw([source], target, rng)
    cand_h, query_h = cast.embed(lm, candidates, target, queries)
    return CastPool(candidates, queries, cand_h, query_h, rng.getstate())


def fit_cast_stages(
    lm: LanguageModel,
    cast: CAST,
    source: Task,
    target: Task,
    seed: int = 0,
    pool: CastPool | None = None,
) -> tuple[torch.Tensor, dict[str, float], CastPool]:
    """Fit a single-source CAST vector through castlib's own code and time its stages.

    1. embed: `CAST.draw` + `CAST.embed` (skipped when ``pool`` is given);
    2. select: `CAST.choose` (``castlib.selection.select``, method ``cast``);
    3. extract: `CAST.extract` (k-shot and zero-shot activations of the m selected samples at
       every layer, ``v_l = mean_s h_l(Pk(s; D_s)) - h_l(P0(s))``).

    Returns ``(vector [n_layers, hidden], seconds per stage, pool)``.
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    if pool is None:
        pool = embed_pool(lm, cast, source, target, seed)
    times["embed_s"] = time.perf_counter() - start
    start = time.perf_counter()
    chosen = cast.choose(pool.cand_h, pool.query_h, seed)
    times["select_s"] = time.perf_counter() - start
    start = time.perf_counter()
    rng = random.Random()
    rng.setstate(pool.rng_state)
    selected = [pool.candidates[i] for i in chosen]
    vector, _ = cast.extract(
        lm, [source], selected, pool.candidates, pool.cand_h, pool.query_h, rng
    )
    times["extract_s"] = time.perf_counter() - start
    times["total_s"] = times["embed_s"] + times["select_s"] + times["extract_s"]
    return vector, times, pool


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def bench_overheads(
    lm: LanguageModel, target: Task, vector: torch.Tensor, cfg: BenchConfig
) -> dict[str, Any]:
    """castlib.evaluate / record / steer vs the bare forward passes on identical batches.

    The unit of pairing is one batch: every function runs on the same batch back to back (the
    castlib calls get that batch's examples or prompts and build exactly that padded batch;
    steering contexts are entered per batch, so their set-up cost is included).
    """
    examples = list(target.test[: cfg.n])
    prompts = [zero_shot(target, ex) for ex in examples]
    units = _units(lm, examples, prompts, cfg.batch_size)
    layer = _steer_layer(lm, cfg)
    v1 = {layer: vector[layer]}

    def run_eval(u: Unit) -> None:
        evaluate(lm, target, examples=u.examples, batch_size=cfg.batch_size, progress=False)

    def run_record(u: Unit) -> None:
        record_activations(lm, u.prompts, None, cfg.batch_size, progress=False)

    def steered(mapping: object, positions: str = "last") -> Callable[[Unit], None]:
        def run(u: Unit) -> None:
            with steer(lm, mapping, alpha=cfg.alpha, positions=positions):
                _forward(lm, u)

        return run

    fns = {
        "forward": lambda u: _forward(lm, u),
        "evaluate": run_eval,
        "backbone": lambda u: _backbone(lm, u),
        "record_all_layers": run_record,
        "steer_1_layer_last": steered(v1),
        "steer_all_layers_last": steered(vector),
        "steer_1_layer_all_positions": steered(v1, "all"),
    }
    cpu: dict[str, list[float]] = {}
    times = interleaved(
        fns, cfg.repeats, cfg.warmup, lm.device, "overheads", cfg.progress, units, cpu
    )

    def ratios(t: dict[str, list[float]]) -> dict[str, float]:
        return {
            "eval_vs_forward": paired_ratio(t["forward"], t["evaluate"]),
            "record_vs_forward": paired_ratio(t["backbone"], t["record_all_layers"]),
            "record_vs_model_forward": paired_ratio(t["forward"], t["record_all_layers"]),
            "steer_last_overhead": paired_ratio(t["steer_1_layer_last"], t["forward"]),
            "steer_all_overhead": paired_ratio(t["steer_all_layers_last"], t["forward"]),
            "steer_positions_all_overhead": paired_ratio(
                t["steer_1_layer_all_positions"], t["forward"]
            ),
        }

    return {
        **ratios(times),
        "cpu_time_ratios": ratios(cpu),
        "n_queries": len(prompts),
        "batch_size": cfg.batch_size,
        "n_batches": len(units),
        "pairs_per_ratio": len(times["forward"]),
        "real_tokens": sum(int(u.batch.attention_mask.sum()) for u in units),
        "padded_tokens": sum(u.batch.input_ids.numel() for u in units),
        "steer_layer": layer,
        "run_s": {name: run_total(t, len(units)) for name, t in times.items()},
        "times_s": times,
    }


# --- peers -------------------------------------------------------------------------------------


def _import_steering_vectors() -> tuple[Any, str] | None:
    try:
        import steering_vectors
    except Exception:  # noqa: BLE001 - any import failure means "unavailable"
        return None
    return steering_vectors, getattr(steering_vectors, "__version__", "?")


def _import_repeng() -> tuple[Any, str, list[str]] | None:
    notes = []
    try:
        import numpy as np

        if not hasattr(np, "float_"):
            # repeng 0.4 annotates with np.float_ (removed in NumPy 2) at class-definition time
            np.float_ = np.float64
            notes.append("np.float_ aliased to np.float64 before import (repeng 0.4 pins numpy<2)")
        import repeng
        import repeng.control
        import repeng.extract
    except Exception:  # noqa: BLE001
        return None
    try:
        from importlib.metadata import version

        ver = version("repeng")
    except Exception:  # noqa: BLE001  # pragma: no cover
        ver = "?"
    return repeng, ver, notes


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.float(), b.float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float((a - b).abs().max()),
        "max_abs": float(a.abs().max()),
    }


def _sv_record_last(
    sv: Any, lm: LanguageModel, batches: Sequence[Batch], layer: int
) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for b in batches:
            with sv.record_activations(lm.model, layer_nums=[layer]) as rec:
                lm.model(**b.model_inputs(), use_cache=False, logits_to_keep=1)
            act = rec[layer][0]
            last = last_token_index(b.attention_mask)
            rows.append((b.indices, act[torch.arange(act.shape[0]), last].float().cpu()))
    out = torch.empty(sum(len(i) for i, _ in rows), rows[0][1].shape[-1])
    for idx, r in rows:
        out[idx] = r
    return out


def bench_peers(
    lm: LanguageModel, target: Task, vector: torch.Tensor, cfg: BenchConfig
) -> dict[str, Any]:
    """steering-vectors and repeng vs castlib on the same batches, vector, alpha and layer.

    One interleaved group (unit = one batch): the unsteered forward, castlib's steering with
    positions "all" and "last", and each available peer; every steering context (or repeng
    wrapper) is entered per batch, for every library alike.
    """
    examples = list(target.test[: cfg.n_peer])
    prompts = [zero_shot(target, ex) for ex in examples]
    units = _units(lm, examples, prompts, cfg.batch_size)
    batches = [u.batch for u in units]
    layer = _steer_layer(lm, cfg)
    vec = vector[layer].to(lm.device, lm.dtype)
    out: dict[str, Any] = {}

    def castlib_run(positions: str) -> Callable[[Unit], None]:
        def run(u: Unit) -> None:
            with steer(lm, {layer: vector[layer]}, alpha=cfg.alpha, positions=positions):
                _forward(lm, u)

        return run

    ref_acts = record_activations(
        lm, prompts, [layer, lm.n_layers - 1], cfg.batch_size, progress=False
    )
    with steer(lm, {layer: vector[layer]}, alpha=cfg.alpha, positions="all"):
        ref_logits_all = _last_logits(lm, batches[0])
    with steer(lm, {layer: vector[layer]}, alpha=cfg.alpha, positions="last"):
        ref_logits_last = _last_logits(lm, batches[0])
    fns: dict[str, Callable[[Unit], None]] = {
        "forward": lambda u: _forward(lm, u),
        "castlib_all_positions": castlib_run("all"),
        "castlib_last": castlib_run("last"),
    }

    found = _import_steering_vectors()
    if found is not None:
        sv, sv_version = found
        steering = sv.SteeringVector({layer: vec}, layer_type="decoder_block")

        def sv_all(u: Unit) -> None:
            with steering.apply(lm.model, multiplier=cfg.alpha, min_token_index=0):
                _forward(lm, u)

        def sv_last(u: Unit) -> None:
            # steering-vectors has no "last real token" rule: a token mask of the batch
            mask = torch.zeros_like(u.batch.attention_mask, dtype=lm.dtype)
            mask[torch.arange(mask.shape[0]), last_token_index(u.batch.attention_mask)] = 1
            with steering.apply(
                lm.model, multiplier=cfg.alpha, min_token_index=None, token_indices=mask
            ):
                _forward(lm, u)

        fns["steering_vectors_all_positions"] = sv_all
        fns["steering_vectors_last"] = sv_last

    found_r = _import_repeng()
    if found_r is not None:
        repeng, rp_version, rp_notes = found_r
        control = repeng.extract.ControlVector(
            model_type=lm.model.config.model_type,
            directions={layer: vector[layer].float().numpy()},
        )

        def repeng_run(with_control: bool) -> Callable[[Unit], None]:
            def run(u: Unit) -> None:
                wrapped = repeng.control.ControlModel(lm.model, [layer])
                try:
                    if with_control:
                        wrapped.set_control(control, coeff=cfg.alpha)
                    with torch.inference_mode():
                        wrapped(**u.batch.model_inputs(), use_cache=False, logits_to_keep=1)
                finally:
                    wrapped.unwrap()

            return run

        fns["repeng_all_positions"] = repeng_run(True)
        fns["repeng_wrapped_no_control"] = repeng_run(False)

    cpu: dict[str, list[float]] = {}
    times = interleaved(fns, cfg.repeats, cfg.warmup, lm.device, "peers", cfg.progress, units, cpu)
    common = {
        "castlib_steer_overhead_all_positions": paired_ratio(
            times["castlib_all_positions"], times["forward"]
        ),
        "castlib_steer_overhead_last": paired_ratio(times["castlib_last"], times["forward"]),
    }

    if found is None:
        out["steering-vectors"] = "unavailable"
    else:
        with steering.apply(lm.model, multiplier=cfg.alpha, min_token_index=0):
            logits_all = _last_logits(lm, batches[0])
        acts = _sv_record_last(sv, lm, batches, layer)
        out["steering-vectors"] = {
            "version": sv_version,
            "apply_overhead_vs_castlib": paired_ratio(
                times["steering_vectors_all_positions"], times["castlib_all_positions"]
            ),
            "apply_overhead_vs_castlib_cpu_time": paired_ratio(
                cpu["steering_vectors_all_positions"], cpu["castlib_all_positions"]
            ),
            "apply_overhead_vs_castlib_last": paired_ratio(
                times["steering_vectors_last"], times["castlib_last"]
            ),
            "steer_overhead": paired_ratio(
                times["steering_vectors_all_positions"], times["forward"]
            ),
            **common,
            "activation_agreement": _agreement(ref_acts[:, 0], acts),
            "steered_logits_agreement": _agreement(ref_logits_all, logits_all),
            "notes": [
                "layer indexing: decoder_block matcher 'model.layers.{num}' = castlib's "
                "lm.blocks[l] (block outputs), identical sites",
                "apply(min_token_index=0) adds at every position including left padding, like "
                "castlib positions='all'; apply_overhead_vs_castlib compares the two",
                "no last-real-token rule: 'last' is a token_indices mask built per batch "
                "(apply_overhead_vs_castlib_last compares it with castlib positions='last')",
                "its hook writes the block output in place (original[None] = ...)",
                "activations recorded with steering_vectors.record_activations on castlib's "
                "batches (it keeps the full [batch, seq, hidden] output of each layer)",
            ],
        }

    if found_r is None:
        out["repeng"] = "unavailable"
    else:
        wrapped = repeng.control.ControlModel(lm.model, [layer])
        try:
            wrapped.set_control(control, coeff=cfg.alpha)
            with torch.inference_mode():
                logits = wrapped(**batches[0].model_inputs(), use_cache=False, logits_to_keep=1)
            logits_all = logits.logits[:, -1].float().cpu()
        finally:
            wrapped.unwrap()
        if any(isinstance(m, repeng.control.ControlModule) for m in lm.blocks):  # pragma: no cover
            raise RuntimeError("repeng's ControlModel was not unwrapped")
        # repeng's own extraction: its own tokenisation (the tokenizer's padding side, no
        # position ids) and output_hidden_states[layer + 1]
        hid = repeng.extract.batched_get_hiddens(
            lm.model, lm.tokenizer, prompts, [layer, lm.n_layers - 1], cfg.batch_size
        )
        out["repeng"] = {
            "version": rp_version,
            "apply_overhead_vs_castlib": paired_ratio(
                times["repeng_all_positions"], times["castlib_all_positions"]
            ),
            "apply_overhead_vs_castlib_cpu_time": paired_ratio(
                cpu["repeng_all_positions"], cpu["castlib_all_positions"]
            ),
            "steer_overhead": paired_ratio(times["repeng_all_positions"], times["forward"]),
            "wrapper_overhead_no_control": paired_ratio(
                times["repeng_wrapped_no_control"], times["forward"]
            ),
            **common,
            "activation_agreement": _agreement(ref_acts[:, 0], torch.as_tensor(hid[layer])),
            "activation_agreement_last_layer": _agreement(
                ref_acts[:, 1], torch.as_tensor(hid[lm.n_layers - 1])
            ),
            "steered_logits_agreement": _agreement(ref_logits_all, logits_all),
            "steered_logits_vs_castlib_last": _agreement(ref_logits_last, logits_all),
            "notes": [
                *rp_notes,
                "ControlModel replaces model.layers[l] by a ControlModule wrapper (mutates the "
                "model); each timed call wraps, sets the control, runs the batch and unwraps",
                "adds coeff * direction at all positions, masking left padding via position_ids "
                "(castlib positions='all' also adds at padding, which no real token attends to); "
                "compared against castlib positions='all'",
                "control layer ids index model.layers directly (= castlib's blocks[l]), but its "
                "extraction reads output_hidden_states[l + 1], whose last entry is after the "
                "final norm, not the last block's output (see activation_agreement_last_layer)",
                "its extraction tokenises by itself (tokenizer padding side, no position ids: "
                "with left padding the positions shift, which rotary attention nearly ignores)",
            ],
        }
    out["layer"] = layer
    out["alpha"] = cfg.alpha
    out["n_queries"] = len(prompts)
    out["pairs_per_ratio"] = len(times["forward"])
    out["run_s"] = {name: run_total(t, len(units)) for name, t in times.items()}
    return out


# --- CAST vs ICL -------------------------------------------------------------------------------


def bench_icl(
    lm: LanguageModel, source: Task, target: Task, vector: torch.Tensor, cfg: BenchConfig
) -> dict[str, Any]:
    """Per-query cost of CAST (zero-shot + steering) vs zero-shot vs cross-task k-shot ICL.

    Queries are scored ``latency_batch_size`` at a time (1: the latency of a single query);
    the unit of pairing is one such group. ICL uses the first k source training examples as
    demonstrations for every query (so the prefix is shared and can be cached). The cached
    variant's latency excludes the one-off prefix pass, reported as ``prefix_once_s``.
    """
    queries = list(target.test[: cfg.n_latency])
    layer = _steer_layer(lm, cfg)
    lb = cfg.latency_batch_size
    labels = target.labels
    n_q = len(queries)
    units = [list(range(i, min(i + lb, n_q))) for i in range(0, n_q, lb)]
    zs = [zero_shot(target, q) for q in queries]
    methods: dict[str, Callable[[list[int]], object]] = {}
    info: dict[str, dict[str, Any]] = {}
    n_zs = _n_tokens(lm, zs)

    def score(prompts: list[str]) -> Callable[[list[int]], object]:
        return lambda u: score_prompts(
            lm, [prompts[i] for i in u], labels, batch_size=lb, progress=False
        )

    def cast(u: list[int]) -> object:
        with steer(lm, {layer: vector[layer]}, alpha=cfg.alpha):
            return score_prompts(lm, [zs[i] for i in u], labels, batch_size=lb, progress=False)

    methods["zero_shot"] = score(zs)
    info["zero_shot"] = {"prompt_tokens": n_zs, "computed_tokens": n_zs}
    methods["cast"] = cast
    info["cast"] = {"prompt_tokens": n_zs, "computed_tokens": n_zs}
    prefix_checks: dict[str, Any] = {}
    prefix_fns: dict[str, Callable[[], object]] = {}
    for k in cfg.ks:
        demos = list(source.train[:k])
        prompts = [cross_task(source, demos, target, q) for q in queries]
        n_naive = _n_tokens(lm, prompts)
        methods[f"icl{k}_naive"] = score(prompts)
        info[f"icl{k}_naive"] = {"prompt_tokens": n_naive, "computed_tokens": n_naive}
        prefix, suffixes = split_shared_prefix(prompts)
        pc = build_prefix_cache(lm, prefix)
        n_suffix = [len(r) for r in encode(lm.tokenizer, suffixes, add_special_tokens=False)]
        methods[f"icl{k}_cached"] = lambda u, pc=pc, suffixes=suffixes: score_suffixes(
            lm, pc, [suffixes[i] for i in u], labels, batch_size=lb, progress=False
        )
        prefix_fns[f"icl{k}_prefix"] = lambda prefix=prefix: build_prefix_cache(lm, prefix)
        info[f"icl{k}_cached"] = {
            "prompt_tokens": [pc.n_tokens + s for s in n_suffix],
            "computed_tokens": n_suffix,
            "prefix_tokens": pc.n_tokens,
        }
        naive_scores, _ = score_prompts(lm, prompts, labels, batch_size=cfg.batch_size)
        cached_scores, _ = score_suffixes(lm, pc, suffixes, labels, batch_size=cfg.batch_size)
        matches = joint_tokenisation_matches(lm, prefix, suffixes)
        prefix_checks[f"icl{k}"] = {
            "max_abs_diff_vs_naive": float((naive_scores - cached_scores).abs().max()),
            "joint_tokenisation_match_fraction": sum(matches) / len(matches),
            "same_predictions": bool(
                (naive_scores.argmax(1) == cached_scores.argmax(1)).all().item()
            ),
        }
    times = interleaved(
        methods, cfg.repeats, cfg.warmup, lm.device, "icl latency", cfg.progress, units
    )
    # the one-off prefix passes, timed in their own interleaved group
    times.update(interleaved(prefix_fns, cfg.repeats, 0, lm.device, "icl prefix", False))
    memory: dict[str, Any] = {}
    mem_method = ""
    for name, fn in methods.items():
        prefix_fn = prefix_fns.get(name.replace("_cached", "_prefix"))

        def whole_run(fn: Callable = fn, prefix_fn: Callable | None = prefix_fn) -> None:
            if prefix_fn is not None:  # the cached variant pays for its prefix pass too
                prefix_fn()
            for u in units:
                fn(u)

        memory[name], mem_method = _peak_memory(lm.device, whole_run)
    n_test = len(target.test)
    total = {name: run_total(times[name], len(units)) for name in methods}
    zs_lat = total["zero_shot"] / n_q
    rows: dict[str, Any] = {}
    for name in methods:
        per_query = total[name] / n_q
        row = {
            "prompt_tokens_per_query": sum(info[name]["prompt_tokens"]) / n_q,
            "computed_tokens_per_query": sum(info[name]["computed_tokens"]) / n_q,
            "latency_per_query_s": per_query,
            "latency_vs_zero_shot": paired_ratio(times[name], times["zero_shot"]),
            "tokens_vs_zero_shot": sum(info[name]["prompt_tokens"]) / sum(n_zs),
            "peak_memory_bytes": memory[name],
        }
        base_mem = memory["zero_shot"]
        row["peak_memory_vs_zero_shot"] = (
            memory[name] / base_mem if memory[name] is not None and base_mem else None
        )
        if name.endswith("_cached"):
            prefix_s = _median(times[name.replace("_cached", "_prefix")])
            row["prefix_tokens"] = info[name]["prefix_tokens"]
            row["prefix_once_s"] = prefix_s
            row["prefix_vs_zero_shot_query"] = prefix_s / zs_lat
            row[f"latency_per_query_amortised_over_{n_test}_s"] = per_query + prefix_s / n_test
            row["prefix_check"] = prefix_checks[name.replace("_cached", "")]
        rows[name] = row
    out: dict[str, Any] = {
        "cast_vs_zero_shot_latency": paired_ratio(times["cast"], times["zero_shot"]),
        "n_queries": n_q,
        "latency_batch_size": lb,
        "pairs_per_ratio": len(times["zero_shot"]),
        "steer_layer": layer,
        "memory_method": mem_method,
        "methods": rows,
        "times_s": times,
    }
    if 4 in cfg.ks:
        out["icl4_vs_zero_shot_latency"] = rows["icl4_naive"]["latency_vs_zero_shot"]
        out["icl4_vs_zero_shot_tokens"] = rows["icl4_naive"]["tokens_vs_zero_shot"]
    return out


# --- fitting cost ------------------------------------------------------------------------------


def bench_fitting(
    lm: LanguageModel, source: Task, target: Task, cfg: BenchConfig
) -> dict[str, Any]:
    """One-off CAST fitting cost vs m: embed the pool, select, extract (`fit_cast_stages`,
    i.e. `castlib.methods.cast.CAST`'s own stages)."""
    n_pool = min(cfg.pool, len(source.train))
    casts = {
        m: cast_method(m, n_pool, cfg.n_select_queries, cfg.k_demos, cfg.batch_size) for m in cfg.ms
    }
    first = casts[cfg.ms[0]]
    pool = embed_pool(lm, first, source, target, cfg.seed)
    queries = pool.queries
    components: dict[int, list[dict[str, float]]] = {m: [] for m in cfg.ms}

    def fit(m: int) -> Callable[[], None]:
        def run() -> None:
            _, t, _ = fit_cast_stages(lm, casts[m], source, target, seed=cfg.seed, pool=pool)
            components[m].append(t)

        return run

    zs = [zero_shot(target, q) for q in queries]
    fns: dict[str, Callable[[], object]] = {
        "embed_pool": lambda: embed_pool(lm, first, source, target, cfg.seed),
        "zero_shot_queries": lambda: score_prompts(
            lm, zs, target.labels, batch_size=cfg.latency_batch_size, progress=False
        ),
    }
    fns.update({f"m{m}": fit(m) for m in cfg.ms})
    times = interleaved(fns, cfg.fitting_repeats, 0, lm.device, "fitting cost", cfg.progress)
    zs_query = _median(times["zero_shot_queries"]) / len(zs)
    embed_s = _median(times["embed_pool"])
    per_m = {}
    for m in cfg.ms:
        sel = _median(c["select_s"] for c in components[m])
        ext = _median(c["extract_s"] for c in components[m])
        per_m[str(m)] = {
            "select_s": sel,
            "extract_s": ext,
            "extract_prompts": 2 * m,
            "select_plus_extract_s": sel + ext,
            "total_with_pool_embedding_s": embed_s + sel + ext,
            "total_vs_zero_shot_query": (embed_s + sel + ext) / zs_query,
            "select_plus_extract_vs_zero_shot_query": (sel + ext) / zs_query,
        }
    return {
        "pool": n_pool,
        "n_select_queries": len(queries),
        "k_demos": cfg.k_demos,
        "embed_pool_s": embed_s,
        "embed_pool_prompts": n_pool + len(queries),
        "zero_shot_query_s": zs_query,
        "per_m": per_m,
        "notes": [
            "embedding the candidate pool (and the target queries) is independent of m (done "
            "once per pool); selection + extraction scale with m",
            "extraction (CAST.extract): 2m prompts (k-shot and zero-shot of each selected "
            "sample) through record_activations at every layer",
            "x zero-shot query: the one-off cost in units of one zero-shot query's latency",
        ],
    }


# --- latency vs prompt length ------------------------------------------------------------------


def _icl_to_length(
    lm: LanguageModel, source: Task, target: Task, query: Example, length: int
) -> tuple[str, int, int]:
    """Cross-task prompt with as many source demos as fit in ``length`` tokens (k >= 0)."""
    best = zero_shot(target, query)
    best_n, best_k = len(encode(lm.tokenizer, [best])[0]), 0
    for k in range(1, len(source.train) + 1):
        prompt = cross_task(source, list(source.train[:k]), target, query)
        n = len(encode(lm.tokenizer, [prompt])[0])
        if n > length:
            break
        best, best_n, best_k = prompt, n, k
    return best, best_n, best_k


def _long_input(lm: LanguageModel, target: Task, query: Example, length: int) -> tuple[str, int]:
    """Zero-shot prompt whose input text is extended with other test sentences to ~length."""
    field_name = target.fields[0]
    text = query.fields[field_name]
    pool = [ex.fields[field_name] for ex in target.test]
    i = 0
    best = zero_shot(target, query)
    best_n = len(encode(lm.tokenizer, [best])[0])
    while best_n < length and i < len(pool):
        text = f"{text} {pool[i]}"
        i += 1
        ex = Example(id=query.id, fields={**query.fields, field_name: text}, label=query.label)
        prompt = zero_shot(target, ex)
        n = len(encode(lm.tokenizer, [prompt])[0])
        if n > length:
            break
        best, best_n = prompt, n
    return best, best_n


def bench_length(
    lm: LanguageModel, source: Task, target: Task, vector: torch.Tensor, cfg: BenchConfig
) -> dict[str, Any]:
    """Per-query latency vs prompt length: k-shot ICL vs zero-shot + steering.

    For each length: ICL with as many source demonstrations as fit, CAST (zero-shot + steering
    at the query's own length), and a zero-shot prompt whose input is extended to the length,
    steered and unsteered. Unit of pairing: one group of ``latency_batch_size`` queries.
    """
    layer = _steer_layer(lm, cfg)
    queries = list(target.test[: cfg.n_length])
    labels = target.labels
    lb = cfg.latency_batch_size
    n_q = len(queries)
    units = [list(range(i, min(i + lb, n_q))) for i in range(0, n_q, lb)]
    zs = [zero_shot(target, q) for q in queries]

    def plain(prompts: list[str]) -> Callable[[list[int]], object]:
        return lambda u: score_prompts(
            lm, [prompts[i] for i in u], labels, batch_size=lb, progress=False
        )

    def steered(prompts: list[str]) -> Callable[[list[int]], object]:
        def run(u: list[int]) -> object:
            with steer(lm, {layer: vector[layer]}, alpha=cfg.alpha):
                return plain(prompts)(u)

        return run

    rows = {}
    for length in tqdm(cfg.lengths, desc="latency vs length", disable=not cfg.progress):
        icl = [_icl_to_length(lm, source, target, q, length) for q in queries]
        long = [_long_input(lm, target, q, length) for q in queries]
        long_prompts = [p for p, _ in long]
        fns = {
            "cast": steered(zs),
            "icl": plain([p for p, _, _ in icl]),
            "long_steered": steered(long_prompts),
            "long_unsteered": plain(long_prompts),
        }
        times = interleaved(
            fns, cfg.length_repeats, cfg.warmup, lm.device, f"length {length}", False, units
        )
        total = {name: run_total(t, len(units)) for name, t in times.items()}
        rows[str(length)] = {
            "icl_k": [k for _, _, k in icl],
            "icl_tokens_per_query": sum(n for _, n, _ in icl) / n_q,
            "icl_latency_per_query_s": total["icl"] / n_q,
            "cast_tokens_per_query": sum(_n_tokens(lm, zs)) / n_q,
            "cast_latency_per_query_s": total["cast"] / n_q,
            "icl_vs_cast_latency": paired_ratio(times["icl"], times["cast"]),
            "long_input_tokens_per_query": sum(n for _, n in long) / n_q,
            "long_input_steered_latency_per_query_s": total["long_steered"] / n_q,
            "long_input_unsteered_latency_per_query_s": total["long_unsteered"] / n_q,
            "long_input_steer_overhead": paired_ratio(
                times["long_steered"], times["long_unsteered"]
            ),
        }
    return {
        "n_queries": n_q,
        "latency_batch_size": lb,
        "steer_layer": layer,
        "per_length": rows,
        "notes": [
            "icl: cross-task prompt with the most source demonstrations that fit in the length",
            "cast: zero-shot + steering at the query's own (zero-shot) length",
            "long_input: a zero-shot prompt whose input is extended with other test sentences to "
            "the length, steered and unsteered (CAST's cost when the input itself is long)",
        ],
    }


# ----------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def machine_info(lm: LanguageModel) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "castlib": __version__,
        "git": _git_commit(),
        "model": lm.name,
        "n_layers": lm.n_layers,
        "hidden_size": lm.hidden_size,
        "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""),
    }
    if lm.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(lm.device)
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info


def run_bench(
    lm: LanguageModel,
    cfg: BenchConfig,
    source: Task | None = None,
    target: Task | None = None,
) -> dict[str, Any]:
    """Run the sections of ``cfg`` and return the JSON-ready result (see the module doc).

    The model's activation store is switched off while the sections run (and restored after):
    the timings repeat the same prompts, which a store would answer from memory, so recording
    and fitting would be timed as lookups. The ``castfit`` section sets its own stores."""
    saved_store = lm.activation_store
    lm.activation_store = None
    try:
        return _run_sections(lm, cfg, source, target)
    finally:
        lm.activation_store = saved_store


def _run_sections(
    lm: LanguageModel, cfg: BenchConfig, source: Task | None, target: Task | None
) -> dict[str, Any]:
    from castlib.tasks import load_task

    source = source if source is not None else load_task(cfg.source)
    target = target if target is not None else load_task(cfg.target)
    started = time.perf_counter()
    # a real (small) CAST vector for the timings: m = 4 samples of the source
    small = cast_method(
        m=min(4, len(source.train)),
        pool=min(16, len(source.train)),
        n_queries=4,
        k_demos=3,
        batch_size=cfg.batch_size,
    )
    vector, _, _ = fit_cast_stages(lm, small, source, target, seed=cfg.seed)
    result: dict[str, Any] = {
        "meta": machine_info(lm),
        "config": asdict(cfg),
        "definitions": {k: d for k, (_, d) in RATIO_KEYS.items()},
        "tasks": {"source": source.name, "target": target.name},
    }
    sections: dict[str, Any] = {}
    if "overheads" in cfg.sections:
        sections["overheads"] = bench_overheads(lm, target, vector, cfg)
    if "peers" in cfg.sections:
        sections["peers"] = bench_peers(lm, target, vector, cfg)
    if "icl" in cfg.sections:
        sections["icl"] = bench_icl(lm, source, target, vector, cfg)
    if "fitting" in cfg.sections:
        sections["fitting"] = bench_fitting(lm, source, target, cfg)
    if "length" in cfg.sections:
        sections["length"] = bench_length(lm, source, target, vector, cfg)
    if "sweep" in cfg.sections:
        sections["sweep"] = bench_sweep(
            lm,
            source,
            target,
            vector,
            n=cfg.n_sweep,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            bf16=cfg.bf16,
        )
    if "castfit" in cfg.sections:
        sections["castfit"] = bench_cast_fit(
            lm,
            source,
            target,
            n=cfg.n_sweep,
            batch_size=cfg.batch_size,
            cast_params=dict(cfg.sweep_cast),
            seed=cfg.seed,
        )
    for name in ("overheads", "icl", "sweep", "castfit"):
        for key in RATIO_KEYS:
            if name in sections and key in sections[name]:
                result[key] = sections[name][key]
    if "peers" in sections:
        result["peers"] = {
            k: v for k, v in sections["peers"].items() if k in ("steering-vectors", "repeng")
        }
    goals = {}
    for key, (goal, _) in RATIO_KEYS.items():
        if goal is None or key not in result:
            continue
        op, bound = goal.split()[:2]
        value = result[key]
        holds = value >= float(bound) if op == ">=" else value <= float(bound)
        goals[key] = {"goal": goal, "value": value, "holds": bool(holds)}
    result["goals"] = goals
    result["sections"] = sections
    result["meta"]["seconds"] = time.perf_counter() - started
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of a `run_bench` result."""
    lines = []
    meta = result.get("meta", {})
    lines.append(
        f"castlib bench: {meta.get('model')} on {meta.get('device')} ({meta.get('dtype')}), "
        f"torch {meta.get('torch')}, {meta.get('torch_threads')} thread(s), "
        f"commit {str((meta.get('git') or {}).get('commit'))[:10]}, {meta.get('date')}"
    )
    cpu = result.get("sections", {}).get("overheads", {}).get("cpu_time_ratios", {})
    lines.append(f"{'ratio (wall clock)':<34}{'value':>10}  {'goal':<9}{'holds':<6}{'cpu-time':>9}")
    for key, (goal, _) in RATIO_KEYS.items():
        if key not in result:
            continue
        holds = result.get("goals", {}).get(key, {}).get("holds")
        mark = "" if holds is None else ("yes" if holds else "NO")
        extra = f"{cpu[key]:>9.3f}" if key in cpu else ""
        lines.append(f"{key:<34}{result[key]:>10.3f}  {goal or '-':<9}{mark:<6}{extra}")
    for peer, row in (result.get("peers") or {}).items():
        if not isinstance(row, dict):
            lines.append(f"peer {peer}: {row}")
            continue
        act = row["activation_agreement"]
        lines.append(
            f"peer {peer} {row['version']}: apply time vs castlib "
            f"{row['apply_overhead_vs_castlib']:.3f}, steer overhead {row['steer_overhead']:.3f}, "
            f"activations cos {act['cosine_mean']:.6f} max|diff| {act['max_abs_diff']:.2e}"
        )
    sections = result.get("sections", {})
    if "icl" in sections:
        lines.append("")
        lines.append(
            f"{'method':<16}{'tokens/q':>9}{'computed/q':>11}{'latency/q s':>12}"
            f"{'x zero-shot':>12}{'peak MiB':>10}"
        )
        for name, row in sections["icl"]["methods"].items():
            mem = row["peak_memory_bytes"]
            lines.append(
                f"{name:<16}{row['prompt_tokens_per_query']:>9.1f}"
                f"{row['computed_tokens_per_query']:>11.1f}{row['latency_per_query_s']:>12.4f}"
                f"{row['latency_vs_zero_shot']:>12.2f}"
                f"{(mem / 2**20 if mem is not None else float('nan')):>10.1f}"
            )
    if "fitting" in sections:
        fit = sections["fitting"]
        lines.append("")
        lines.append(
            f"fitting (pool {fit['pool']}: embed {fit['embed_pool_s']:.2f}s; "
            f"zero-shot query {fit['zero_shot_query_s']:.4f}s)"
        )
        lines.append(f"{'m':>5}{'select s':>10}{'extract s':>11}{'total s':>9}{'x zs query':>12}")
        for m, row in fit["per_m"].items():
            lines.append(
                f"{m:>5}{row['select_s']:>10.4f}{row['extract_s']:>11.3f}"
                f"{row['total_with_pool_embedding_s']:>9.2f}{row['total_vs_zero_shot_query']:>12.1f}"
            )
    if "length" in sections:
        lines.append("")
        lines.append(
            f"{'length':>7}{'icl k':>7}{'icl tok':>9}{'icl s':>9}{'cast s':>9}{'icl/cast':>10}"
            f"{'long steer ovh':>16}"
        )
        for length, row in sections["length"]["per_length"].items():
            lines.append(
                f"{length:>7}{max(row['icl_k']):>7}{row['icl_tokens_per_query']:>9.0f}"
                f"{row['icl_latency_per_query_s']:>9.3f}{row['cast_latency_per_query_s']:>9.3f}"
                f"{row['icl_vs_cast_latency']:>10.2f}{row['long_input_steer_overhead']:>16.3f}"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--json", required=True, help="where to write the JSON result")
    p.add_argument("--quick", action="store_true", help="a run of a few minutes")
    p.add_argument("--model", default=None, help="model id/path (default: the embedded Gemma)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--n", type=int, default=None, help="queries of the overheads section")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds")
    p.add_argument("--layer", type=int, default=None, help="steering layer (default L // 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on CPU, see the module doc; 0: torch's default)",
    )
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    p.add_argument("--source", default=None, help="source task (default sst2)")
    p.add_argument("--target", default=None, help="target task (default financial_phrasebank)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from castlib.models import EMBEDDED_MODEL, load_model

    overrides: dict[str, Any] = {
        "sections": tuple(s.strip() for s in args.sections.split(",") if s.strip()),
        "progress": not args.no_progress,
    }
    for name in ("n", "batch_size", "repeats", "layer", "source", "target"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    cfg = quick_config(**overrides) if args.quick else full_config(**overrides)
    lm = load_model(args.model or EMBEDDED_MODEL, device=args.device, dtype=args.dtype)
    threads = args.threads if args.threads is not None else (1 if lm.device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    result = run_bench(lm, cfg)
    # the command as run from the repository root (no machine path in a result kept in git)
    args_given = list(sys.argv[1:] if argv is None else argv)
    result["meta"]["argv"] = ["python", "-m", "benchmarks.bench", *args_given]
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(format_table(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
