"""Cached last-token sweeps: equal to the full path, for every family, padding and answer shape."""

from __future__ import annotations

import pytest
import torch

from castlib.scoring import score_prompts, sweep_scores
from castlib.scoring.kv_cache import fork_cache
from castlib.steer import steer
from castlib.testing import FAMILIES, tiny_model

# long and short prompts in one batch: tiny Gemma's sliding window (8 tokens) is exceeded
PROMPTS = [
    "classify the sentiment .\n\ntext : the movie was very bad and not good at all , a bad film\nanswer :",
    "text : good\nanswer :",
    "text : great film\nanswer :",
    "which film ?\n\ntext : a movie that was not great\nanswer :",
    "a",
]
SINGLE = ["positive", "negative"]
MULTI = ["very good", "bad", "not bad at all"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def fam_lm(request, tokenizer):
    return tiny_model(request.param, tokenizer=tokenizer)


def _configs(lm):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(lm.n_layers, lm.hidden_size, generator=gen)
    mid = lm.n_layers // 2
    return [
        None,
        (lambda: steer(lm, v, alpha=2.0, layers=[mid])),
        (lambda: steer(lm, v, alpha=-1.5, layers=[0, lm.n_layers - 1])),  # several layers
        (lambda: steer(lm, v[1], alpha=0.5, layers=[1], norm_preserving=True)),
    ]


def _full(lm, config, prompts, answers, side_batch):
    from contextlib import nullcontext

    with config() if config is not None else nullcontext():
        scores, counts = score_prompts(lm, prompts, answers, batch_size=side_batch)
    return scores, counts


@pytest.mark.parametrize("pass_size", [1, 7], ids=["one-batch-passes", "merged-passes"])
@pytest.mark.parametrize("answers", [SINGLE, MULTI], ids=["single", "multi"])
def test_sweep_equals_full_path(fam_lm, answers, pass_size):
    """Prefix batches of 3 (sorted by length, so each pads to a different width), run alone or
    merged (left-padded) into passes of >= 7 rows: both agree with the uncached full path."""
    prompts = [p for p in PROMPTS if len(fam_lm.tokenizer(p)["input_ids"]) >= 2]
    configs = _configs(fam_lm)
    cached, counts = sweep_scores(
        fam_lm, prompts, answers, configs, batch_size=3, pass_size=pass_size
    )
    for config, got in zip(configs, cached, strict=True):
        want, want_counts = _full(fam_lm, config, prompts, answers, 2)
        assert counts == want_counts
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_steering_changes_scores_and_alpha_zero_is_unsteered(lm):
    v = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(1))
    configs = [
        None,
        lambda: steer(lm, v, alpha=0.0, layers=[1]),
        lambda: steer(lm, v, alpha=4.0, layers=[1]),
    ]
    (plain, zero, strong), _ = sweep_scores(lm, PROMPTS, SINGLE, configs)
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, strong)


def test_padding_amount_does_not_change_scores(lm):
    v = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(2))
    configs = [lambda: steer(lm, v, alpha=1.0, layers=[2])]
    (alone,), _ = sweep_scores(lm, PROMPTS, MULTI, configs, batch_size=1)  # no padding
    (padded,), _ = sweep_scores(lm, PROMPTS, MULTI, configs, batch_size=5)
    torch.testing.assert_close(alone, padded, atol=1e-4, rtol=0)


def test_positions_all_is_refused(lm):
    v = torch.randn(lm.hidden_size)
    with pytest.raises(ValueError, match="positions='last'"):
        sweep_scores(lm, PROMPTS, SINGLE, [lambda: steer(lm, v, layers=[1], positions="all")])
    assert not any(block._forward_hooks for block in lm.blocks)


def test_foreign_hooks_are_refused(lm):
    from contextlib import contextmanager

    @contextmanager
    def other():
        handle = lm.blocks[1].register_forward_hook(lambda m, a, o: o)
        try:
            yield
        finally:
            handle.remove()

    with pytest.raises(ValueError, match="hooks other than"):
        sweep_scores(lm, PROMPTS, SINGLE, [other])


def test_outer_steering_is_refused(lm):
    with steer(lm, torch.zeros(lm.hidden_size), layers=[1]):
        with pytest.raises(RuntimeError, match="outer steer context"):
            sweep_scores(lm, PROMPTS, SINGLE, [None])


def test_fork_cache_leaves_the_cache_untouched(lm):
    from castlib.scoring.kv_cache import cache_kwargs, new_cache, returned_cache

    ids = torch.as_tensor([[1, 5, 6, 7]])
    out = lm.model(input_ids=ids, **cache_kwargs(lm, new_cache(lm)), use_cache=True)
    cache = returned_cache(out)
    before = [layer.keys.clone() for layer in cache.layers]
    lm.model(
        input_ids=torch.as_tensor([[8]]), **cache_kwargs(lm, fork_cache(cache)), use_cache=True
    )
    assert [layer.keys.shape for layer in cache.layers] == [b.shape for b in before]
    assert all(torch.equal(layer.keys, b) for layer, b in zip(cache.layers, before, strict=True))


@pytest.mark.parametrize(
    "name, params",
    [
        ("cast", {"m": 6, "k": 2, "n_candidates": 20, "n_queries": 8, "graph_k": 3}),
        ("task_vector", {"k": 2, "n_prompts": 4}),
        ("function_vector", {"k": 2, "n_prompts": 4}),
    ],
)
def test_method_grid_cached_equals_full(lm, name, params):
    """The tuning grid scored through cached prefixes chooses the same (layer, alpha) with the
    same accuracies as scoring every grid point in full."""
    import castlib.methods as methods
    from tests.conftest import make_task

    source, target = make_task("src", n_train=40, seed=1), make_task("tgt", n_train=12, seed=2)
    grid = {"batch_size": 4, "n_tune": 6, "alphas": (0.5, 4.0), "layers": (1, 2)}
    fitted = {}
    for scoring in ("auto", "full"):
        method = methods.get(name)(**params, **grid, scoring=scoring)
        method.fit(lm, [source], target, seed=0)
        fitted[scoring] = method.info
    cached, full = fitted["auto"], fitted["full"]
    assert cached["tuning_scoring"] == "last_token_cached" and full["tuning_scoring"] == "full"
    assert (cached["layer"], cached["alpha"]) == (full["layer"], full["alpha"])
    for a, b in zip(cached["tuning_grid"], full["tuning_grid"], strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["gold_logp"] == pytest.approx(b["gold_logp"], abs=1e-4)


def test_positions_all_methods_keep_the_full_path(lm):
    import castlib.methods as methods
    from tests.conftest import make_task

    source, target = make_task("src", n_train=40, seed=1), make_task("tgt", n_train=12, seed=2)
    icv = methods.get("icv")(batch_size=4, n_tune=4, alphas=(0.05,), k=2, n_samples=4)
    icv.fit(lm, [source], target, seed=0)
    assert icv.info["tuning_scoring"] == "full"
    with pytest.raises(ValueError, match="positions='last'"):
        methods.get("cast")(positions="all", scoring="cached")


def test_evaluate_sweep_equals_evaluate_in_each_context(lm):
    from castlib.scoring import evaluate, evaluate_sweep
    from tests.conftest import make_task

    task = make_task("tgt", n_train=4, n_test=9, seed=3)
    v = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(4))
    configs = [None, lambda: steer(lm, v, alpha=3.0, layers=[1]), lambda: steer(lm, v, layers=[2])]
    swept = evaluate_sweep(lm, task, configs, batch_size=4)
    for config, got in zip(configs, swept, strict=True):
        if config is None:
            want = evaluate(lm, task, batch_size=4)
        else:
            with config():
                want = evaluate(lm, task, batch_size=4)
        assert got.scoring == "last_token_cached" and want.scoring == "full"
        assert [p["pred"] for p in got.predictions] == [p["pred"] for p in want.predictions]
        assert got.accuracy == want.accuracy and got.prompt_tokens_total == want.prompt_tokens_total
        for a, b in zip(got.predictions, want.predictions, strict=True):
            assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-4)


def test_steering_method_record_says_which_path_ran(lm):
    import castlib.methods as methods
    from tests.conftest import make_task

    source, target = make_task("src", n_train=40, seed=1), make_task("tgt", n_train=12, seed=2)
    grid = {"batch_size": 4, "n_tune": 4, "alphas": (0.5,), "layers": (1,), "k": 2, "n_prompts": 4}
    records = {}
    for scoring in ("auto", "full"):
        tv = methods.get("task_vector")(**grid, scoring=scoring).fit(lm, [source], target, seed=0)
        records[scoring] = tv.evaluate(lm, target, limit=6)
    assert records["auto"]["tuning_scoring"] == "last_token_cached"
    assert records["full"]["tuning_scoring"] == "full"
    # one configuration, one-token answers: the plain pass is cheaper and ran
    assert records["auto"]["scoring"] == records["full"]["scoring"] == "full"
    assert records["auto"]["predictions"] == records["full"]["predictions"]
    assert records["auto"]["accuracy"] == records["full"]["accuracy"]
    zs = methods.get("zero_shot")().fit(lm, [source], target).evaluate(lm, target, limit=6)
    assert zs["scoring"] == "full"


def test_evaluate_sweep_accepts_a_task_name_and_refuses_other_types(lm, monkeypatch):
    import importlib

    E = importlib.import_module("castlib.scoring.evaluation")
    from tests.conftest import make_task

    task = make_task("tgt", n_train=4, n_test=5, seed=3)
    monkeypatch.setattr(E, "load_task", lambda name: task)
    (res,) = E.evaluate_sweep(lm, "tgt", [None])
    assert res.n == 5 and res.task == "tgt"
    with pytest.raises(TypeError, match="task must be a Task or a task name"):
        E.evaluate_sweep(lm, 3, [None])


def test_one_configuration_takes_the_cheaper_exact_path(lm):
    """`evaluate_sweep` with one configuration: the plain pass for one-token answers, the
    cached path for multi-token ones (a prefix pass then one pass per answer beats one full
    pass per answer); equal scores either way, and the same refusals on both paths."""
    import dataclasses

    from castlib.scoring import evaluate, evaluate_sweep
    from tests.conftest import make_task

    v = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(4))
    config = lambda: steer(lm, v, alpha=3.0, layers=[1])  # noqa: E731
    single = make_task("tgt", n_train=4, n_test=9, seed=3)
    multi = dataclasses.replace(single, labels=("very bad", "not bad at all"))
    for task, path in ((single, "full"), (multi, "last_token_cached")):
        (got,) = evaluate_sweep(lm, task, [config], batch_size=4)
        with config():
            want = evaluate(lm, task, batch_size=4)
        assert got.scoring == path, task.labels
        assert [p["pred"] for p in got.predictions] == [p["pred"] for p in want.predictions]
        for a, b in zip(got.predictions, want.predictions, strict=True):
            assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-4)
        with pytest.raises(ValueError, match="takes only positions='last'"):
            evaluate_sweep(lm, task, [lambda: steer(lm, v, layers=[1], positions="all")])
        with steer(lm, v, layers=[1]), pytest.raises(RuntimeError, match="outer steer context"):
            evaluate_sweep(lm, task, [config])
        assert not lm.interventions
