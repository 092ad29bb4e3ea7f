import json
from collections.abc import Mapping

import pytest
import torch

import castlib.methods as methods
from castlib.prompts import k_shot, zero_shot
from castlib.record import record_activations
from castlib.tasks import Task
from tests.conftest import make_task

FAST = {"batch_size": 8, "n_tune": 4, "alphas": (0.5, 1.0), "layers": (1, 2)}


class NoTest(Mapping):
    """Splits whose test split raises when touched."""

    def __init__(self, splits):
        self._s = dict(splits)

    def __getitem__(self, key):
        if key == "test":
            raise AssertionError("the test split was read during fitting")
        return self._s[key]

    def __iter__(self):
        return iter(self._s)

    def __len__(self):
        return len(self._s)


@pytest.fixture()
def source():
    return make_task("src", n_train=40, n_test=4, seed=1)


@pytest.fixture()
def target():
    return make_task("tgt", n_train=12, n_test=6, seed=2)


def guarded(task: Task) -> Task:
    return Task(
        task.name, task.kind, task.labels, task.instruction, task.fields, NoTest(task.splits)
    )


@pytest.mark.parametrize(
    "name, params",
    [
        ("zero_shot", {}),
        ("few_shot", {"k": 2}),
        ("cross_task_icl", {"k": 2, "demo_choice": "random"}),
        ("cross_task_icl", {"k": 2, "demo_choice": "similar", "n_candidates": 16}),
        ("task_vector", {**FAST, "k": 2, "n_prompts": 4}),
        ("icv", {"batch_size": 8, "n_tune": 4, "alphas": (0.05,), "k": 2, "n_samples": 4}),
        ("cast", {**FAST, "m": 6, "k": 2, "n_candidates": 20, "n_queries": 8, "graph_k": 3}),
        (
            "cast",
            {
                **FAST,
                "m": 6,
                "k": 2,
                "n_candidates": 20,
                "contrast": "pca",
                "protocol": "target_dev",
            },
        ),
        (
            "cast",
            {
                **FAST,
                "m": 6,
                "k": 2,
                "n_candidates": 20,
                "contrast": "fewshot_only",
                "selection": "random",
            },
        ),
    ],
)
def test_every_method_fits_without_test_split_and_gives_a_record(
    lm, source, target, name, params, tmp_path
):
    method = methods.get(name)(**params)
    method.fit(lm, [guarded(source)], guarded(target), seed=0)
    rec = method.evaluate(lm, target, limit=5)
    assert set(methods.RESULT_FIELDS) <= set(rec)
    assert rec["n"] == 5 and 0 <= rec["accuracy"] <= 1 and rec["method"] == name
    labelled = name == "few_shot" or params.get("protocol") == "target_dev"
    assert rec["uses_target_labels"] is labelled
    json.dumps(rec)  # JSON-ready
    again = (
        methods.get(name)(**params).fit(lm, [source], target, seed=0).evaluate(lm, target, limit=5)
    )
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith(("seconds", "memory_mb"))}  # noqa: E731
    assert strip(rec) == strip(again)  # same seed, same inputs: same record
    method.save(tmp_path / "m")
    reloaded = methods.load(tmp_path / "m")
    sampled = reloaded.evaluate(lm, target, sample=5, sample_seed=1)
    assert sampled["n"] == 5
    rec2 = reloaded.evaluate(lm, target, limit=5)
    assert [p["log_probs"] for p in method.last_result.predictions] == [
        p["log_probs"] for p in reloaded.last_result.predictions
    ]
    assert strip(rec2) == strip(rec)


def test_cast_vector_equals_hand_computed_mean_delta(lm, source, target):
    cast = methods.get("cast")(**FAST, m=5, k=2, n_candidates=20, n_queries=4, graph_k=3)
    cast.fit(lm, [source], target, seed=3)
    by_id = {ex.id: ex for ex in source.train}
    selected = [by_id[s.split(":", 1)[1]] for s in cast.info["selected_ids"]]
    assert len({s.id for s in selected}) == 5
    # recompute with the same seeded demo draws: rebuild them as the method does
    import random

    rng = random.Random(3)
    tuning = set(cast.info["tuning_ids"])  # drawn first, never candidates
    pool = [x for x in source.train if f"src:{x.id}" not in tuning]
    cands = rng.sample(pool, 20)
    rng.sample(list(target.train), 4)  # the query draw
    few, zero = [], []
    for s in selected:
        same = [x for x in selected if x.id != s.id]
        demos = rng.sample(same, 2)
        few.append(k_shot(source, s, demos))
        zero.append(zero_shot(source, s))
    expected = (record_activations(lm, few) - record_activations(lm, zero)).mean(0)
    got = torch.stack([cast.vector[layer] for layer in range(lm.n_layers)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert cands  # candidates were drawn first


def test_tuning_grid_and_choice_reported(lm, source, target):
    cast = methods.get("cast")(**FAST, m=4, k=2, n_candidates=16, n_queries=4, graph_k=3)
    cast.fit(lm, [source], target)
    grid = cast.info["tuning_grid"]
    # the unsteered model once, first, then 2 layers x 2 alphas
    assert len(grid) == 5 == cast.info["tuning_configs"]
    assert (grid[0]["layer"], grid[0]["alpha"]) == (None, 0.0)
    assert {g["layer"] for g in grid[1:]} == {1, 2}
    best = max(grid, key=lambda g: (g["accuracy"], g["gold_logp"]))  # the first on ties
    assert (cast.info["layer"], cast.info["alpha"]) == (best["layer"], best["alpha"])
    assert cast.info["steered"] is (best["alpha"] != 0)


def test_registry_and_bad_params():
    assert {"cast", "zero_shot", "few_shot", "cross_task_icl", "task_vector", "icv"} <= set(
        methods.available()
    )
    with pytest.raises(KeyError, match="available"):
        methods.get("nope")
    with pytest.raises(TypeError, match="unknown parameter"):
        methods.get("cast")(mm=3)
    with pytest.raises(ValueError, match="selection"):
        methods.get("cast")(selection="best")
    with pytest.raises(ValueError, match="protocol"):
        methods.get("cast")(protocol="test")
    with pytest.raises(RuntimeError, match="fit"):
        methods.get("zero_shot")().evaluate(None, make_task())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_record_names_the_dtype_the_model_ran_in(tokenizer, source, target, dtype):
    from castlib.testing import tiny_model

    lm = tiny_model("llama", tokenizer=tokenizer, dtype=dtype)
    method = methods.get("zero_shot")()
    method.fit(lm, [source], target, seed=0)
    rec = method.evaluate(lm, target, limit=3)
    assert rec["dtype"] == str(dtype).removeprefix("torch.")
