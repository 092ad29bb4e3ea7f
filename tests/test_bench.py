"""The bench functions on a tiny model with tiny sizes: structure and sanity, no timing goals."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import bench
from castlib.activation_store import ActivationStore
from castlib.testing import tiny_model

from .conftest import make_task

HEADLINE = (
    "eval_vs_forward",
    "record_vs_forward",
    "record_vs_model_forward",
    "steer_last_overhead",
    "steer_all_overhead",
    "cast_vs_zero_shot_latency",
    "icl4_vs_zero_shot_latency",
    "icl4_vs_zero_shot_tokens",
    "steered_cached_vs_zero_shot",
    "grid_cached_speedup",
    "cast_fit_eval_speedup",
    "cast_fit_eval_speedup_cpu",
    "cast_fit_eval_speedup_warm_store",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finite_positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def tiny_config(**overrides):
    sizes = {
        "n": 6,
        "batch_size": 4,
        "repeats": 2,
        "n_peer": 4,
        "n_latency": 2,
        "ks": (1, 4),
        "ms": (4, 6),
        "pool": 12,
        "n_select_queries": 4,
        "k_demos": 2,
        "lengths": (64, 160),
        "n_length": 1,
        "n_sweep": 8,
        "sweep_cast": (("m", 4), ("k", 2), ("n_candidates", 12), ("n_queries", 4), ("n_tune", 4)),
        "progress": False,
    }
    sizes.update(overrides)
    return bench.quick_config(**sizes)


@pytest.fixture(scope="module")
def result(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer)
    store = lm.activation_store = ActivationStore()
    source = make_task("src", n_train=60, n_test=6, seed=1)
    target = make_task("tgt", n_train=6, n_test=10, seed=2)
    out = bench.run_bench(lm, tiny_config(), source=source, target=target)
    # the timings never read a store (repeated prompts would be timed as lookups); the
    # model's own store is back afterwards, untouched
    assert lm.activation_store is store and store.hits == store.misses == 0
    return out


def test_headline_ratios(result):
    for key in HEADLINE:
        assert _finite_positive(result[key]), (key, result.get(key))
    assert result["icl4_vs_zero_shot_tokens"] > 1.0  # demonstrations add tokens
    assert set(result["goals"]) == {
        "eval_vs_forward",
        "record_vs_forward",
        "record_vs_model_forward",
        "steer_last_overhead",
        "steer_all_overhead",
        "steered_cached_vs_zero_shot",
        "cast_fit_eval_speedup",
        "cast_fit_eval_speedup_cpu",
    }
    for row in result["goals"].values():
        assert isinstance(row["holds"], bool)


def test_json_round_trip_and_meta(result, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    back = json.loads(path.read_text())
    for key in ("date", "torch", "transformers", "git", "platform", "cpu", "device", "dtype"):
        assert key in back["meta"], key
    assert "commit" in back["meta"]["git"]
    assert set(back["definitions"]) >= set(HEADLINE)


def test_peers_recorded(result):
    peers = result["peers"]
    assert set(peers) == {"steering-vectors", "repeng"}
    for name, row in peers.items():
        if row == "unavailable":
            continue
        assert _finite_positive(row["apply_overhead_vs_castlib"]), name
        agree = row["activation_agreement"]
        assert agree["cosine_mean"] > 0.999 and math.isfinite(agree["max_abs_diff"]), name
        assert row["notes"], name


def test_icl_section(result):
    icl = result["sections"]["icl"]
    methods = icl["methods"]
    assert set(methods) == {"zero_shot", "cast", "icl1_naive", "icl1_cached", "icl4_naive",
                            "icl4_cached"}  # fmt: skip
    for name, row in methods.items():
        assert _finite_positive(row["latency_per_query_s"]), name
        assert row["prompt_tokens_per_query"] >= row["computed_tokens_per_query"] > 0, name
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] >= 0
    for k in (1, 4):
        cached, naive = methods[f"icl{k}_cached"], methods[f"icl{k}_naive"]
        # the cached prefix is not recomputed per query; attended tokens are the same
        assert cached["computed_tokens_per_query"] < naive["computed_tokens_per_query"]
        assert cached["prompt_tokens_per_query"] == naive["prompt_tokens_per_query"]
        check = cached["prefix_check"]
        assert check["joint_tokenisation_match_fraction"] == 1.0
        assert check["max_abs_diff_vs_naive"] <= 1e-4


def test_fitting_and_length_sections(result):
    fit = result["sections"]["fitting"]
    assert set(fit["per_m"]) == {"4", "6"}
    for row in fit["per_m"].values():
        assert _finite_positive(row["total_vs_zero_shot_query"])
        assert row["extract_s"] > 0 and row["select_s"] >= 0
    per_length = result["sections"]["length"]["per_length"]
    assert set(per_length) == {"64", "160"}
    for row in per_length.values():
        assert _finite_positive(row["icl_vs_cast_latency"])
        assert _finite_positive(row["long_input_steer_overhead"])
    assert per_length["160"]["icl_tokens_per_query"] <= 160
    assert per_length["160"]["icl_tokens_per_query"] > per_length["64"]["icl_tokens_per_query"]


def test_sweep_section(result):
    sweep = result["sections"]["sweep"]
    assert sweep["n"] == 8 and sweep["configs"] == len(sweep["layers"]) * len(sweep["alphas"])
    assert sweep["cached_vs_full_prediction_agreement"] == 1.0  # exact path: same predictions
    assert sweep["sweep_peak_memory_mb"] > 0
    assert 0 <= sweep["bf16_prediction_agreement"] <= 1
    assert _finite_positive(sweep["bf16_vs_fp32_time"])


def test_castfit_section(result):
    cast = result["sections"]["castfit"]
    assert cast["cast_same_choice"] is True
    # the store changes what is computed, not the results
    assert cast["cast_accuracy"]["full"] == cast["cast_accuracy"]["fast"]
    assert cast["cast_accuracy"]["warm"] == cast["cast_accuracy"]["fast"]
    for path in ("full", "fast", "warm"):
        parts = cast[f"cast_{path}_fit_cpu_s"] + cast[f"cast_{path}_eval_cpu_s"]
        assert parts == pytest.approx(cast[f"cast_{path}_path_cpu_s"])


def test_format_table(result):
    table = bench.format_table(result)
    for key in HEADLINE:
        assert key in table


def test_interleaved_and_paired_ratio():
    calls = []
    times = bench.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3,
        warmup=1,
        progress=False,
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(times["a"]) == len(times["b"]) == 3
    assert bench.paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 3.0]) == 2.0

    calls.clear()
    cpu: dict[str, list[float]] = {}
    times = bench.interleaved(
        {"a": lambda u: calls.append(("a", u)), "b": lambda u: calls.append(("b", u))},
        repeats=2,
        warmup=1,
        progress=False,
        units=[0, 1],
        cpu_times=cpu,
    )
    assert calls == [("a", 0), ("b", 0),  # warm-up on the first unit
                     ("a", 0), ("b", 0), ("b", 1), ("a", 1),  # round 0
                     ("b", 0), ("a", 0), ("a", 1), ("b", 1)]  # round 1  # fmt: skip
    assert len(times["a"]) == len(cpu["b"]) == 4
    assert bench.run_total([1.0, 10.0, 3.0, 20.0], n_units=2) == 2.0 + 15.0


def test_peak_memory_measures_an_allocation():
    def allocate():
        x = torch.ones(32 * 2**20 // 4)  # 32 MiB
        x.add_(1)
        del x

    peak, method = bench._peak_memory(torch.device("cpu"), allocate)
    assert peak >= 0 and "RSS" in method


def test_config_validation():
    with pytest.raises(ValueError, match="unknown sections"):
        bench.quick_config(sections=("overheads", "nope"))


def test_main_writes_json(tmp_path, monkeypatch, tokenizer):
    lm = tiny_model("gpt2", tokenizer=tokenizer)
    monkeypatch.setattr("castlib.models.load_model", lambda *a, **k: lm)
    source = make_task("src", n_train=60, n_test=4, seed=1)
    target = make_task("tgt", n_train=4, n_test=6, seed=2)
    monkeypatch.setattr(
        "castlib.tasks.load_task", lambda name, *a, **k: source if name == "sst2" else target
    )
    out = tmp_path / "r" / "bench.json"
    code = bench.main(
        ["--json", str(out), "--quick", "--n", "4", "--batch-size", "4", "--repeats", "1",
         "--sections", "overheads", "--no-progress", "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    for key in ("eval_vs_forward", "record_vs_forward", "steer_last_overhead"):
        assert _finite_positive(data[key])


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem
        for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
        if p.stem != "__init__"
    ),
)
def test_every_benchmark_script_still_imports(name: str) -> None:
    # the scripts beside the package import its internals: a refactor that moves a name
    # breaks them silently unless something imports them
    importlib.import_module(f"benchmarks.{name}")


def test_selection_reach_saturation_counts_the_picks_until_the_curve_stops_growing() -> None:
    from benchmarks.selection_reach import saturation

    assert saturation([0.1, 0.3, 0.5, 0.5, 0.5]) == 3
    assert saturation([0.2, 0.4]) == 2
