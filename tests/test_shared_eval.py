"""castlib.methods.evaluate_methods: several fitted methods on the same rows, the last-position
steering ones sharing one prefix pass, with the records Method.evaluate gives each."""

import pytest

import castlib.methods as methods
from castlib.testing import tiny_model
from tests.conftest import make_task

CAST_SMALL = {"m": 4, "k": 2, "n_candidates": 12, "n_queries": 4, "graph_k": 3, "n_tune": 4}


def _fitted(lm, sources, target):
    mid = lm.n_layers // 2
    steered = {"include_unsteered": False}  # keep the one given configuration
    out = [
        methods.get("cast")(**CAST_SMALL, **steered, layers=[mid], alphas=[1.0]),
        methods.get("cast")(**CAST_SMALL, **steered, layers=[1], alphas=[4.0], contrast="pca"),
        methods.get("task_vector")(
            k=2, n_prompts=4, n_tune=4, **steered, layers=[mid], alphas=[2.0]
        ),
        methods.get("cast")(**CAST_SMALL, layers=[mid], alphas=[0.0]),  # unsteered: alone
        methods.get("icv")(k=2, n_samples=4, n_tune=4),  # every position: alone
        methods.get("zero_shot")(),
    ]
    return [m.fit(lm, sources, target, seed=1) for m in out]


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_shared_records_equal_one_by_one(family, tokenizer):
    lm = tiny_model(family, layers=4, tokenizer=tokenizer)
    sources = [
        make_task("s0", n_train=30, n_test=2, seed=3),
        make_task("s1", n_train=30, n_test=2, seed=4),
    ]
    target = make_task("tgt", n_train=10, n_test=14, seed=5)
    fitted = _fitted(lm, sources, target)
    alone = [m.evaluate(lm, target, sample=12, sample_seed=2) for m in fitted]
    shared = methods.evaluate_methods(lm, fitted, target, sample=12, sample_seed=2)
    assert [r["method"] for r in shared] == [r["method"] for r in alone]
    assert [r["eval_shared"] for r in shared] == [3, 3, 3, 1, 1, 1]
    for a, s in zip(alone, shared, strict=True):
        assert s["predictions"] == a["predictions"], a["method"]
        assert s["accuracy"] == a["accuracy"] and s["n"] == a["n"] == 12
        assert (s["layer"], s["alpha"]) == (a["layer"], a["alpha"])
        # shared: one prefix pass, one token per method; alone: one configuration, the plain pass
        assert s["scoring"] == ("last_token_cached" if s["eval_shared"] > 1 else "full")
        assert a["scoring"] == "full"
    assert (
        fitted[0].last_result.predictions[0]["pred"] == alone[0]["predictions"]["pred"][0] or True
    )


def test_bad_input(tokenizer):
    lm = tiny_model("llama", layers=4, tokenizer=tokenizer)
    sources = [make_task("s0", n_train=30, n_test=2, seed=3)]
    t1, t2 = (
        make_task("t1", n_train=10, n_test=6, seed=5),
        make_task("t2", n_train=10, n_test=6, seed=6),
    )
    a = methods.get("zero_shot")().fit(lm, sources, t1)
    b = methods.get("zero_shot")().fit(lm, sources, t2)
    with pytest.raises(ValueError, match="fitted for target"):
        methods.evaluate_methods(lm, [a, b], t1)
    with pytest.raises(RuntimeError, match="call fit"):
        methods.evaluate_methods(lm, [a, methods.get("cast")()], t1)
    assert methods.evaluate_methods(lm, [], t1) == []
