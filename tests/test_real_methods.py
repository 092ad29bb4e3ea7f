"""Real-model tier for the methods: every method end to end on sst2 -> financial_phrasebank."""

import json

import pytest

import castlib.methods as methods

pytestmark = pytest.mark.real_model

SMALL = {"batch_size": 8, "n_tune": 8, "layers": (9,), "alphas": (0.5, 1.0)}
ADAPT = {"batch_size": 8, "r": 2, "steps": 2, "train_batch_size": 4, "progress": False}
CASES = [
    ("zero_shot", {}),
    ("few_shot", {"k": 2}),
    ("cross_task_icl", {"k": 2, "demo_choice": "random"}),
    ("cross_task_icl", {"k": 2, "demo_choice": "similar", "n_candidates": 24}),
    ("task_vector", {**SMALL, "alphas": (1.0,), "k": 2, "n_prompts": 4}),
    ("icv", {"batch_size": 8, "n_tune": 8, "alphas": (0.05,), "k": 2, "n_samples": 6}),
    ("cast", {**SMALL, "m": 6, "k": 2, "n_candidates": 24, "n_queries": 8}),
    (
        "function_vector",
        {**SMALL, "alphas": (1.0,), "k": 2, "n_prompts": 4, "n_corrupted": 2, "top_heads": (2,)},
    ),
    ("i2cl", {"batch_size": 8, "n_demos": 4, "steps": 2, "progress": False}),
    ("lora", {**ADAPT, "m": 6, "n_candidates": 24, "n_queries": 8}),
    ("lora", {**ADAPT, "train_on": "target_dev", "n_target": 8}),
    ("kasa", {**ADAPT, "m": 6, "n_candidates": 24, "n_queries": 8}),
    ("kasa", {**ADAPT, "train_on": "target_dev", "n_target": 8}),
]


@pytest.mark.parametrize("name, params", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_method_end_to_end(gemma, repo_data, name, params):
    method = methods.get(name)(**params, data_dir=str(repo_data))
    method.fit(gemma, ["sst2"], "financial_phrasebank", seed=0)
    rec = method.evaluate(gemma, "financial_phrasebank", sample=8)  # the file is label-sorted
    assert set(methods.RESULT_FIELDS) <= set(rec)
    assert rec["n"] == 8 and 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["macro_f1"] <= 1.0
    assert rec["sources"] == ["sst2"] and rec["target"] == "financial_phrasebank"
    assert rec["prompt_tokens_per_query"] > 0 and rec["fit_seconds"] >= 0
    assert rec["uses_target_labels"] is (
        name == "few_shot" or params.get("train_on") == "target_dev"
    )
    json.dumps(rec)
