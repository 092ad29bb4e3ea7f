"""Issue 20 points 1 and 7: the steering methods under the labelled-target protocol
(``<name>_target_dev`` labels), and cross-task ICL run one source task per fit."""

import random

import pytest
import torch
import torch.nn.functional as F

import castlib.methods as methods
from castlib.methods import steering
from castlib.methods.cross_task_icl import task_centred
from castlib.methods.tuning import MAX_TARGET_DEV
from castlib.prompts import cross_task, demonstration, zero_shot
from castlib.record import record_activations
from castlib.repro import nbtools
from tests.conftest import make_task
from tests.test_methods import guarded

# shared parameters small enough for tiny models; each method takes the ones it uses
SHARED = {
    "batch_size": 8,
    "n_tune": 4,
    "layers": (1, 2),
    "k": 2,
    "m": 6,
    "n_candidates": 20,
    "n_queries": 8,
    "n_prompts": 4,
    "n_samples": 4,
    "top_heads": (2,),
    "n_corrupted": 3,
}
OVERRIDES = {
    "cast_target_dev": {"alphas": (0.5, 1.0), "graph_k": 3},
    "icv_target_dev": {"alphas": (0.05,)},
}


@pytest.fixture()
def source():
    return make_task("src", n_train=40, n_test=4, seed=1)


@pytest.fixture()
def target():
    return make_task("tgt", n_train=40, n_test=6, seed=2)


def test_every_steering_method_has_a_target_dev_label():
    for name in ("cast", "task_vector", "icv", "function_vector"):
        preset = methods.preset(f"{name}_target_dev")
        assert preset is not None and preset.method == name
        assert dict(preset.params) == {"protocol": "target_dev"}
    i2cl = methods.preset("i2cl_target_dev")
    assert i2cl is not None and dict(i2cl.params) == {"protocol": "target_dev"}
    labels = nbtools.expand_methods("all")
    for name in ("cast", "task_vector", "icv", "function_vector", "i2cl"):  # both protocols
        assert name in labels and f"{name}_target_dev" in labels
    assert "cross_task_icl" not in labels and "lora" not in labels  # split into their presets


@pytest.mark.parametrize(
    "label",
    ["cast_target_dev", "task_vector_target_dev", "icv_target_dev", "function_vector_target_dev"],
)
def test_target_dev_label_runs_records_its_protocol_and_never_tunes_on_test_rows(
    lm, source, target, label, monkeypatch
):
    drawn = []

    def spy(*args, **kwargs):
        rows = original(*args, **kwargs)
        drawn.append(rows)
        return rows

    original = steering.tuning_set
    monkeypatch.setattr(steering, "tuning_set", spy)
    method = nbtools.build_method(label, SHARED, OVERRIDES)
    method.fit(lm, [source], guarded(target), seed=0)  # the test split raises when read
    rec = method.evaluate(lm, target, limit=5)
    assert rec["method"] == methods.preset(label).method
    assert rec["params"]["protocol"] == "target_dev" and rec["protocol"] == "target_dev"
    assert rec["uses_target_labels"] is True
    assert drawn, "the tuning rows were not drawn through steering.tuning_set"
    rows = [pair for call in drawn for pair in call]
    assert {task.name for task, _ in rows} == {"tgt"}
    test_ids = {ex.id for ex in target.test}
    test_texts = {ex.fields["text"] for ex in target.test}
    train_ids = {ex.id for ex in target.train}
    assert all(ex.id in train_ids and ex.id not in test_ids for _, ex in rows)
    assert not {ex.fields["text"] for _, ex in rows} & test_texts
    assert all(len(call) <= MAX_TARGET_DEV for call in drawn)
    assert rec["tuning_n"] == len(drawn[-1])


def test_target_dev_rows_capped_at_32_and_disjoint_from_test(source):
    big = make_task("tgt", n_train=80, n_test=20, seed=5)
    rows = steering.tuning_set("target_dev", [source], big, 32, 0)
    assert len(rows) == MAX_TARGET_DEV == 32
    assert not {ex.id for _, ex in rows} & {ex.id for ex in big.test}
    with pytest.raises(ValueError, match="32"):  # more is refused, not silently capped
        steering.tuning_set("target_dev", [source], big, 100, 0)


# -- cross-task ICL ---------------------------------------------------------------------------


def test_cross_task_icl_defaults_to_one_demonstration_and_takes_one_source(lm, source, target):
    icl = methods.get("cross_task_icl")()
    assert icl.params.k == 1
    other = make_task("other", n_train=30, n_test=2, seed=7)
    with pytest.raises(ValueError, match=r"one source task per fit, got 2 \(\['src', 'other'\]\)"):
        icl.fit(lm, [source, other], target)
    for demo_choice in ("random", "similar"):
        for src in (source, other):  # per (source, target) pair: one source each
            m = methods.get("cross_task_icl")(demo_choice=demo_choice, n_candidates=8)
            rec = m.fit(lm, [src], target, seed=0).evaluate(lm, target, limit=3)
            assert rec["sources"] == [src.name] and rec["source"] == src.name
            prompts = m.prompts(lm, target, target.test[:3])
            texts = [prompts(target, x) for x in target.test[:3]] if callable(prompts) else prompts
            # one demonstration (k = 1) of the source under its instruction, then P0 of x
            shots = {demonstration(src, d) for d in src.train}
            for x, text in zip(target.test[:3], texts, strict=True):
                head = text.removesuffix("\n\n" + zero_shot(target, x))
                assert head.startswith(src.instruction + "\n\n") and head != text
                assert head[len(src.instruction) + 2 :] in shots


def test_random_variant_source_does_not_depend_on_the_seed(lm, source, target):
    picked = {}
    for seed in (0, 1, 2):
        m = methods.get("cross_task_icl")(demo_choice="random", k=2)
        rec = m.fit(lm, [source], target, seed=seed).evaluate(lm, target, limit=2)
        picked[seed] = (rec["source"], tuple(rec["selected_ids"]))
    assert {src for src, _ in picked.values()} == {"src"}  # same source for every seed
    assert all(i.startswith("src:") for _, ids in picked.values() for i in ids)
    assert len({ids for _, ids in picked.values()}) == 3  # the demonstrations differ


def test_similar_variant_puts_the_most_similar_candidate_first(lm, source, target):
    """Retrieval on CAST's content embedding: states at L // 2 of the zero-shot prompts, the
    candidates centred on their mean, the queries on the mean of n_queries target inputs."""
    m = methods.get("cross_task_icl")(demo_choice="similar", k=3, n_candidates=12, n_queries=8)
    m.fit(lm, [source], target, seed=0)
    rng = random.Random(0)  # the fit's draws, in its order: candidates, then target inputs
    rng.sample(list(source.train), 12)
    inputs = rng.sample(list(target.train), 8)

    def states(task, rows):
        texts = [zero_shot(task, ex) for ex in rows]
        return record_activations(lm, texts, layers=[lm.n_layers // 2])[:, 0].double()

    cand_h = states(source, [ex for _, ex in m.candidates])
    cand_e = F.normalize(cand_h - cand_h.mean(0), dim=-1)
    torch.testing.assert_close(m.cand_e.double(), cand_e, atol=1e-5, rtol=1e-5)
    xs = target.test[:2]
    query_e = F.normalize(states(target, xs) - states(target, inputs).mean(0), dim=-1)
    prompts = m.prompts(lm, target, xs)
    sims = query_e @ cand_e.T
    for row, x in enumerate(xs):
        order = sims[row].argsort(descending=True)[:3].tolist()
        demos = [m.candidates[i][1] for i in order]
        assert prompts[row] == cross_task(source, demos, target, x)
    assert m.info["center"] == "per_task" and m.info["n_queries"] == 8


def test_task_centring_finds_the_content_a_shared_offset_hides():
    """Each task's prompts share a large offset (the instruction); on raw cosines the nearest
    candidate is the one most aligned with the target's offset, after centring it is the one
    with the same content."""
    g = torch.Generator().manual_seed(0)
    content = torch.randn(12, 48, generator=g, dtype=torch.float64)
    common = 40 * torch.randn(48, generator=g, dtype=torch.float64)  # the prompt format
    off_s, off_t = (common + 10 * torch.randn(48, generator=g, dtype=torch.float64) for _ in "st")
    cand_h = off_s + content
    picks = [3, 7, 1, 10]
    queries = off_t + content[picks] + 0.05 * torch.randn(4, 48, generator=g, dtype=torch.float64)
    others = off_t + torch.randn(30, 48, generator=g, dtype=torch.float64)  # unlabelled inputs
    centred = task_centred(queries, others.mean(0)) @ task_centred(cand_h, cand_h.mean(0)).T
    assert centred.argmax(dim=1).tolist() == picks
    raw = task_centred(queries, None) @ task_centred(cand_h, None).T
    assert raw.min() > 0.9 and raw.argmax(dim=1).tolist() != picks


def test_similar_variant_needs_target_inputs_to_centre_on(lm, source):
    empty = make_task("tgt0", n_train=0, n_test=4, seed=3)
    m = methods.get("cross_task_icl")(demo_choice="similar", n_candidates=8)
    with pytest.raises(ValueError, match=r"n_queries=64 unlabelled inputs.*center='none'"):
        m.fit(lm, [source], empty)
    with pytest.raises(ValueError, match="center must be one of"):
        methods.get("cross_task_icl")(center="global")
    plain = methods.get("cross_task_icl")(demo_choice="similar", n_candidates=8, center="none")
    rec = plain.fit(lm, [source], empty).evaluate(lm, empty, limit=2)
    assert rec["center"] == "none" and rec["n"] == 2
