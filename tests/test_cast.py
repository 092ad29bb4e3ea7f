"""CAST's pooling over several sources, its contrasts, embedding texts and selection log (issue
20), checked against hand computations on a tiny random model."""

import json

import pytest
import torch

import castlib.methods as methods
import castlib.methods.cast as cast_module
from castlib.analysis import first_principal_direction
from castlib.methods.cast import CAST, input_text
from castlib.prompts import k_shot, zero_shot
from castlib.record import record_activations
from castlib.repro.nbtools import flat_record
from castlib.tasks import Example, Task
from tests.conftest import make_task

FAST = {"batch_size": 8, "n_tune": 4, "alphas": (0.5, 1.0), "layers": (1, 2)}
# m = 5 over two sources: the sources cannot contribute equally many samples
MULTI = {**FAST, "m": 5, "k": 2, "n_candidates": 10, "n_queries": 4, "graph_k": 3}


@pytest.fixture()
def sources():
    return [make_task("srca", n_train=24, n_test=2, seed=1), make_task("srcb", n_train=24, seed=3)]


@pytest.fixture()
def target():
    return make_task("tgt", n_train=10, n_test=4, seed=2)


def fit_capturing(monkeypatch, lm, sources, target, **params):
    """Fit CAST and return it with the (task, s, demos) items its step 3 used."""
    seen = []
    original = cast_module.icl_activations

    def capture(lm_, items, **kw):
        seen.extend(items)
        return original(lm_, items, **kw)

    monkeypatch.setattr(cast_module, "icl_activations", capture)
    method = methods.get("cast")(**MULTI, **params).fit(lm, sources, target, seed=5)
    monkeypatch.setattr(cast_module, "icl_activations", original)
    return method, seen


def hand_deltas(lm, items):
    few = [k_shot(task, s, demos) for task, s, demos in items]
    zero = [zero_shot(task, s) for task, s, _ in items]
    return record_activations(lm, few) - record_activations(lm, zero)  # [n, L, hidden]


def vector(method, lm):
    return torch.stack([method.vector[layer] for layer in range(lm.n_layers)])


def test_multi_source_pooling_matches_the_formula(monkeypatch, lm, sources, target):
    by_samples, items = fit_capturing(monkeypatch, lm, sources, target)
    assert [f"{t.name}:{s.id}" for t, s, _ in items] == by_samples.info["selected_ids"]
    names = [t.name for t, _, _ in items]
    counts = {n: names.count(n) for n in ("srca", "srcb")}
    assert by_samples.info["source_counts"] == counts and min(counts.values()) >= 1
    deltas = hand_deltas(lm, items)
    # default pooling="samples": v_l = mean over all selected samples S
    expected = deltas.mean(0)
    torch.testing.assert_close(vector(by_samples, lm), expected, atol=1e-5, rtol=1e-5)
    assert by_samples.info["source_weights"] == pytest.approx({n: c / 5 for n, c in counts.items()})

    # pooling="sources": the same selection and demonstrations, each task weighted 1/2
    by_sources, items_s = fit_capturing(monkeypatch, lm, sources, target, pooling="sources")
    assert [(t.name, s.id, [d.id for d in ds]) for t, s, ds in items_s] == [
        (t.name, s.id, [d.id for d in ds]) for t, s, ds in items
    ]
    rows = {n: [i for i, x in enumerate(names) if x == n] for n in counts}
    per_task = {n: deltas[r].mean(0) for n, r in rows.items()}
    expected_sources = (per_task["srca"] + per_task["srcb"]) / 2
    torch.testing.assert_close(vector(by_sources, lm), expected_sources, atol=1e-5, rtol=1e-5)
    assert by_sources.info["source_weights"] == pytest.approx({"srca": 0.5, "srcb": 0.5})
    # the two poolings differ when the counts differ (the test can tell them apart)
    assert not torch.allclose(expected, expected_sources, atol=1e-4)

    # similarity weighting tilts the pooling weights; the vector is sum_t w_t mean_t
    tilted, _ = fit_capturing(monkeypatch, lm, sources, target, source_weighting="similarity")
    w = tilted.info["source_weights"]
    assert sum(w.values()) == pytest.approx(1.0)
    expected_tilted = w["srca"] * per_task["srca"] + w["srcb"] * per_task["srcb"]
    torch.testing.assert_close(vector(tilted, lm), expected_tilted, atol=1e-5, rtol=1e-5)

    # pca: ||mean|| times the uncentred first right singular vector, sign-aligned with the mean
    pca, _ = fit_capturing(monkeypatch, lm, sources, target, contrast="pca")
    got = vector(pca, lm)
    for layer in range(lm.n_layers):
        d = deltas[:, layer].double()
        u = torch.linalg.svd(d, full_matrices=False).Vh[0]
        mean = d.mean(0)
        u = u if float(u @ mean) > 0 else -u
        torch.testing.assert_close(got[layer].double(), u * mean.norm(), atol=1e-4, rtol=1e-4)


def test_pca_contrast_follows_a_strong_common_shift():
    gen = torch.Generator().manual_seed(0)
    n, layers, d = 24, 3, 32
    common = torch.randn(layers, d, generator=gen) * 5.0
    h_0 = torch.randn(n, layers, d, generator=gen)
    h_k = h_0 + common + 0.3 * torch.randn(n, layers, d, generator=gen)
    cast = CAST(contrast="pca")
    for pi in (
        torch.full((n,), 1.0 / n),
        torch.cat([torch.full((8,), 1 / 16), torch.full((16,), 1 / 32)]),
    ):
        v = cast._contrast(h_k, h_0, pi)
        deltas = h_k - h_0
        mean = (pi[:, None, None] * deltas).sum(0)
        for layer in range(layers):
            cos = torch.cosine_similarity(v[layer], mean[layer], dim=0)
            assert cos > 0.99
            assert v[layer].norm() == pytest.approx(float(mean[layer].norm()), rel=1e-5)
            # the centred direction (variance around the mean) would not follow the mean
            centred = first_principal_direction(deltas[:, layer], align_with=mean[layer])
            assert torch.cosine_similarity(centred.float(), mean[layer], dim=0) < 0.9


def test_input_text_drops_the_prompt_format():
    task = make_task("src", n_train=3)
    ex = task.train[0]
    assert input_text(task, ex) == ex.fields["text"]
    mc = Task(
        name="mc",
        kind="multiple_choice",
        labels=("A", "B", "C"),
        instruction="Answer the question.",
        fields=("passage", "question"),
        splits={"train": [], "test": []},
    )
    row = Example(
        id="1",
        fields={"passage": "Cells divide.", "question": "What divides?"},
        label=0,
        options=("cells", "rocks"),
    )
    assert input_text(mc, row) == "Cells divide.\nWhat divides?\ncells\nrocks"


def test_embed_text_input_embeds_the_bare_inputs(lm, sources, target):
    items = [(sources[0], ex) for ex in sources[0].train[:4]]
    got = CAST(embed_text="input", batch_size=8)._embed(lm, items, 2)
    want = record_activations(lm, [input_text(t, ex) for t, ex in items], layers=[2])[:, 0]
    torch.testing.assert_close(got, want)
    prompt = CAST(batch_size=8)._embed(lm, items, 2)
    assert not torch.allclose(got, prompt)


def test_selection_log_is_in_the_record(lm, sources, target):
    cast = methods.get("cast")(**MULTI).fit(lm, sources, target, seed=1)
    rec = cast.evaluate(lm, target, limit=2)
    log = rec["selection_log"]
    assert [s["id"] for s in log["steps"]] == rec["selected_ids"]
    assert log["n_queries"] == 4 and log["n_candidates"] == 20 and log["n_targets"] == 4
    # each of the 4 queries links to its graph_k = 3 nearest candidates (never to a query)
    assert log["n_query_candidate_edges"] == 4 * 3 == rec["selection_query_candidate_edges"]
    assert log["center"] == "per_task" and rec["params"]["center"] == "per_task"
    assert rec["selection_share_queries_reached"] == log["share_targets_reached"] > 0
    assert rec["selection_coverage_curve"] == log["coverage_curve"]
    assert len(log["coverage_curve"]) == 5 and log["coverage_curve"][-1] == log["coverage"] > 0
    for step in log["steps"]:
        assert step["objective"] == pytest.approx(step["coverage_gain"] - step["diversity_penalty"])
    assert rec["params"]["pooling"] == "samples" and rec["params"]["embed_text"] == "prompt"
    assert json.loads(flat_record(rec)["selection_log"]) == log


def test_selection_centres_each_source_task_and_the_target(monkeypatch, lm, sources, target):
    """choose() hands select_with_log the raw states with each candidate's source task and the
    target's name, so that centring is per task; center="none" is passed through."""
    seen = {}
    original = cast_module.select_with_log

    def spy(cand, m, **kw):
        seen.update(kw, cand=cand)
        return original(cand, m, **kw)

    monkeypatch.setattr(cast_module, "select_with_log", spy)
    method = methods.get("cast")(**MULTI, center="none").fit(lm, sources, target, seed=1)
    assert seen["center"] == "none" and seen["query_task"] == "tgt"
    assert sorted(set(seen["candidate_tasks"])) == ["srca", "srcb"]
    assert seen["candidate_tasks"].count("srca") == 10
    assert not torch.allclose(seen["cand"].norm(dim=-1), torch.ones(20))  # raw, not normalised
    assert method.info["selection_log"]["center"] == "none"
    with pytest.raises(ValueError, match="center must be one of .*'per_task'"):
        CAST(center="global")


def test_a_single_query_is_refused_naming_the_target(lm, sources, target):
    with pytest.raises(ValueError, match="task 'tgt' \\(queries\\): its 1 embedding"):
        methods.get("cast")(**{**MULTI, "n_queries": 1}).fit(lm, sources, target, seed=1)


def test_bad_pooling_and_embed_text():
    with pytest.raises(ValueError, match="pooling must be one of .*'samples'"):
        CAST(pooling="tasks")
    with pytest.raises(ValueError, match="embed_text must be one of .*'input'"):
        CAST(embed_text="raw")
