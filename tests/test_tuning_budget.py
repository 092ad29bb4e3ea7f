"""Equal tuning budgets with a way back (issue 20, point 2): every steering method chooses
among the same number of distinct configurations, alpha = 0 (the unsteered model) among them,
on the same seeded tuning rows, exactly ``n_tune`` of them."""

import dataclasses

import pytest

import castlib.methods as methods
from castlib.methods.adapters.lora import LoRA
from castlib.methods.function_vector import FunctionVector
from castlib.methods.steering import SteeringMethod, draw_icl_item
from castlib.methods.tuning import (
    MAX_TARGET_DEV,
    N_CONFIGS,
    alpha_ladder,
    config_grid,
    row_keys,
    tuning_rows_per_source,
    tuning_set,
)
from castlib.tasks import Task
from castlib.testing import tiny_model
from tests.conftest import make_task

methods.register(FunctionVector)

STEERING = ("cast", "task_vector", "function_vector", "icv")
#: small extraction sizes; the grid parameters (layers, alphas, n_configs) stay at defaults
SMALL = {
    "cast": {"m": 4, "k": 2, "n_candidates": 12, "n_queries": 4, "graph_k": 3},
    "task_vector": {"k": 2, "n_prompts": 4},
    "function_vector": {"k": 2, "n_prompts": 4, "n_corrupted": 2, "head_layers": (0, 1)},
    "icv": {"k": 2, "n_samples": 4},
}


def sources3() -> list[Task]:
    return [make_task(f"s{i}", n_train=30, n_test=2, seed=10 + i) for i in range(3)]


def test_every_steering_method_shares_one_default_budget():
    registered = [n for n in methods.available() if issubclass(methods.get(n), SteeringMethod)] + [
        "function_vector"
    ]
    assert set(STEERING) <= set(registered)
    for name in set(registered):
        params = methods.get(name).Params()
        assert params.n_configs == N_CONFIGS and params.alphas is None, name
        assert params.include_unsteered is True, name


def test_equal_config_counts_across_methods_on_the_same_rows(tokenizer):
    """Defaults on a model with five candidate layers (other slot counts: the grid tests)."""
    lm = tiny_model("qwen2", layers=8, tokenizer=tokenizer)
    srcs, tgt = sources3(), make_task("tgt", n_train=10, n_test=2, seed=4)
    fitted = {
        name: methods.get(name)(batch_size=16, n_tune=7, **SMALL[name]).fit(lm, srcs, tgt, seed=2)
        for name in STEERING
    }
    expected_rows = [f"{t.name}:{ex.id}" for t, ex in tuning_set("source", srcs, tgt, 7, 2)]
    for name, method in fitted.items():
        grid = method.info["tuning_grid"]
        assert len(grid) == method.info["tuning_configs"] == N_CONFIGS, name
        keys = [
            tuple((k, v) for k, v in g.items() if k not in ("accuracy", "gold_logp")) for g in grid
        ]
        assert len(set(keys)) == len(grid), name  # distinct configurations
        zeros = [g for g in grid if g["alpha"] == 0]
        assert zeros == [grid[0]] and grid[0]["layer"] is None, name  # 0 once, first
        assert method.info["tuning_ids"] == expected_rows, name  # the same rows for all
        assert method.info["tuning_n"] == 7, name
    # five candidate layers: the documented shapes
    cast = fitted["cast"].info["tuning_grid"][1:]
    assert {g["alpha"] for g in cast} == {0.25, 0.5, 1.0, 2.0}
    assert len({g["layer"] for g in cast}) == 5
    tv = fitted["task_vector"].info["tuning_grid"][1:]
    assert {g["alpha"] for g in tv} == {0.25, 0.5, 0.75, 1.0}
    fv = fitted["function_vector"].info["tuning_grid"][1:]
    assert {g["alpha"] for g in fv} == {0.5, 1.0} and {g["top_heads"] for g in fv} == {5, 8}
    icv = fitted["icv"].info["tuning_grid"][1:]
    assert len({g["alpha"] for g in icv}) == N_CONFIGS - 1
    assert {g["layer"] for g in icv} == {"all"}


def test_cast_candidates_never_include_tuning_rows(lm):
    srcs, tgt = sources3(), make_task("tgt", n_train=10, n_test=2, seed=4)
    cast = methods.get("cast")(batch_size=16, n_tune=9, **{**SMALL["cast"], "n_candidates": 21})
    cast.fit(lm, srcs, tgt, seed=0)
    assert cast.info["n_candidates_effective"] == {"s0": 21, "s1": 21, "s2": 21}  # 30 - 3 each
    assert not set(cast.info["selected_ids"]) & set(cast.info["tuning_ids"])


@pytest.mark.parametrize("n_sources", [1, 2, 3])
@pytest.mark.parametrize("n_tune", [7, 32])
def test_exactly_n_tune_rows_for_any_number_of_sources(n_sources, n_tune):
    srcs = [make_task(f"s{i}", n_train=40, n_test=2, seed=i) for i in range(n_sources)]
    rows = tuning_set("source", srcs, srcs[0], n_tune, seed=0)
    assert len(rows) == n_tune == len(row_keys(rows))  # no repeats
    counts = [sum(t.name == s.name for t, _ in rows) for s in srcs]
    assert counts == tuning_rows_per_source(n_tune, n_sources)
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    assert rows == tuning_set("source", srcs, srcs[0], n_tune, seed=0)  # seeded
    assert rows != tuning_set("source", srcs, srcs[0], n_tune, seed=1)


def test_tuning_rows_per_source_deals_the_remainder_first():
    assert tuning_rows_per_source(32, 3) == [11, 11, 10]
    assert tuning_rows_per_source(7, 2) == [4, 3]
    assert tuning_rows_per_source(2, 3) == [1, 1, 0]


def test_tuning_rows_refuse_what_cannot_be_exact():
    small = make_task("small", n_train=5, n_test=2)
    with pytest.raises(ValueError, match="small has 5 train rows; 5 of the n_tune=5"):
        tuning_set("source", [small], small, 5, seed=0)
    with pytest.raises(ValueError, match=f"n_tune must be <= {MAX_TARGET_DEV}"):
        tuning_set("target_dev", [small], small, 33, seed=0)
    with pytest.raises(ValueError, match="at most 32 labelled target rows"):
        methods.get("cast")(protocol="target_dev", n_tune=33)
    # target_dev: the target's labelled rows, at most its train size (recorded as tuning_n)
    assert len(tuning_set("target_dev", [], small, 32, seed=0)) == 5


def test_target_dev_rows_are_those_the_target_dev_adapter_trains_on():
    tgt = make_task("tgt", n_train=20, n_test=2, seed=3)
    lora = LoRA(train_on="target_dev", n_target=8)
    assert lora.training_set(None, [], tgt, seed=5) == tuning_set("target_dev", [], tgt, 8, 5)


def test_vector_draws_avoid_the_tuning_rows():
    src = make_task("s", n_train=12, n_test=2)
    rows = tuning_set("source", [src], src, 8, seed=0)
    held = row_keys(rows)
    import random

    rng = random.Random(0)
    for i in range(20):
        _, x, demos = draw_icl_item([src], i, 3, rng, held)
        assert not {f"s:{e.id}" for e in [x, *demos]} & held
    with pytest.raises(ValueError, match="4 train rows besides the tuning rows"):
        draw_icl_item([src], 0, 4, rng, held)


@pytest.mark.parametrize("n_slots", range(1, 8))
def test_config_grid_size_is_the_budget_for_any_slot_count(n_slots):
    ladder = lambda c: alpha_ladder(c, 0.25, 2.0)  # noqa: E731
    grid = config_grid(list(range(n_slots)), 21, ladder)
    assert len(grid) == len(set(grid)) == 21
    assert grid[0] == (None, 0.0) and all(a > 0 for _, a in grid[1:])
    per_slot = [sum(s == slot for s, _ in grid) for slot in range(n_slots)]
    assert per_slot == tuning_rows_per_source(20, n_slots)  # the same dealing rule


def test_config_grid_counts_alpha_zero_once_and_refuses_an_impossible_budget():
    ladder = lambda c: alpha_ladder(c, 0.25, 2.0)  # noqa: E731
    grid = config_grid([1, 2, 3], 21, ladder, alphas=[0.0, 1.0, 0.5, 1.0])
    assert grid == [(None, 0.0)] + [(la, a) for la in (1, 2, 3) for a in (0.5, 1.0)]
    assert config_grid([1], 3, ladder, include_unsteered=False) == [(1, 0.25), (1, 2.0)]
    with pytest.raises(ValueError, match="n_configs=3 leaves 2 steered configurations for 3"):
        config_grid([1, 2, 3], 3, ladder)
    with pytest.raises(ValueError, match="empty"):
        config_grid([1], 3, ladder, alphas=[0.0], include_unsteered=False)


def test_alpha_ladders():
    assert alpha_ladder(4, 0.25, 2.0) == [0.25, 0.5, 1.0, 2.0]
    assert alpha_ladder(4, 0.25, 1.0, "linear") == [0.25, 0.5, 0.75, 1.0]
    assert alpha_ladder(1, 0.5, 1.0) == [1.0]  # one point: the high end (the papers' alpha)
    icv = alpha_ladder(20, 0.025, 0.2)
    assert icv[0] == 0.025 and icv[-1] == 0.2 and icv == sorted(set(icv))


# -- the way back: steering that only hurts is not kept -------------------------------------


def zero_shot_perfect_target(lm) -> Task:
    """A target whose train rows are labelled with the model's own zero-shot predictions
    (both labels), so zero-shot is right on every tuning row."""
    pool = make_task("hurt", n_train=60, n_test=6, seed=5)
    zs = methods.get("zero_shot")(batch_size=16).fit(lm, [pool], pool)
    preds = zs.evaluate(lm, pool, split="train")["predictions"]["pred"]
    by_label = {y: [ex for ex, p in zip(pool.train, preds, strict=True) if p == y] for y in (0, 1)}
    n = min(3, *map(len, by_label.values()))
    assert n >= 1, "the tiny model predicts one label only: pick another seed"
    train = [dataclasses.replace(ex, label=y) for y in (0, 1) for ex in by_label[y][:n]]
    return dataclasses.replace(pool, name="hurt", splits={"train": train, "test": pool.test})


@pytest.mark.parametrize("name", ["cast", "function_vector", "icv"])
def test_steering_that_only_hurts_keeps_the_unsteered_model(lm, name):
    """alpha in [1e3, 1e4]: the steered state is the vector, so every steered configuration
    predicts one label for every row (half the tuning rows wrong); zero-shot gets them all."""
    tgt = zero_shot_perfect_target(lm)
    src = make_task("src", n_train=30, n_test=2, seed=1)
    method = methods.get(name)(
        batch_size=8,
        protocol="target_dev",
        n_tune=32,
        alpha_range=(1e3, 1e4),
        **SMALL[name],
    ).fit(lm, [src], tgt, seed=0)
    grid = method.info["tuning_grid"]
    assert grid[0]["alpha"] == 0 and grid[0]["accuracy"] == 1.0
    assert max(g["accuracy"] for g in grid[1:]) < 1.0  # every steered point hurts
    assert method.info["tuning_n"] == len(tgt.train)
    assert (method.info["alpha"], method.info["layer"], method.info["steered"]) == (
        0.0,
        None,
        False,
    )
    rec = method.evaluate(lm, tgt)
    zs = methods.get("zero_shot")(batch_size=8).fit(lm, [src], tgt)
    zero = zs.evaluate(lm, tgt)
    assert rec["predictions"] == zero["predictions"] and rec["accuracy"] == zero["accuracy"]
    assert rec["scoring"] == zero["scoring"]  # the same path: bit-identical log-probs
    assert [p["log_probs"] for p in method.last_result.predictions] == [
        p["log_probs"] for p in zs.last_result.predictions
    ]
