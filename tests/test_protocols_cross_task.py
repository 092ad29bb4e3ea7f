"""Issue 20 points 1 and 7: the steering methods under the labelled-target protocol
(``<name>_target_dev`` labels), and cross-task ICL run one source task per fit."""

import pytest

import castlib.methods as methods
from castlib.methods import steering
from castlib.methods.tuning import MAX_TARGET_DEV
from castlib.prompts import cross_task, demonstration, zero_shot
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
    labels = nbtools.expand_methods("all")
    for name in ("cast", "task_vector", "icv", "function_vector"):  # both protocols listed
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
    m = methods.get("cross_task_icl")(demo_choice="similar", k=3, n_candidates=12)
    m.fit(lm, [source], target, seed=0)
    xs = target.test[:2]
    prompts = m.prompts(lm, target, xs)
    sims = m._embed(lm, [(target, x) for x in xs]) @ m.cand_e.T
    for row, x in enumerate(xs):
        order = sims[row].argsort(descending=True)[:3].tolist()
        demos = [m.candidates[i][1] for i in order]
        assert prompts[row] == cross_task(source, demos, target, x)
