"""Notebook helpers: method labels and their variants."""

import pytest

import castlib.methods as methods
from castlib.repro import nbtools


def test_all_expands_every_registered_method_into_its_variants():
    labels = nbtools.expand_methods("all")
    assert len(labels) == len(set(labels))
    bases = {methods.preset(lab).method if methods.preset(lab) else lab for lab in labels}
    assert bases == set(methods.available())
    steering = {
        f"{n}_target_dev" for n in ("cast", "task_vector", "icv", "function_vector", "i2cl")
    }
    for preset in methods.PRESETS.values():
        assert preset.label in labels
        # a preset that is the method's default configuration stands for the bare name
        assert (preset.method in labels) is (preset.label in steering)
    assert {p.label for p in methods.PRESETS.values()} == {
        "cross_task_icl_random",
        "cross_task_icl_similar",
        "lora_source",
        "lora_target_dev",
        "kasa_source",
        "kasa_target_dev",
        *steering,
    }
    assert nbtools.expand_methods("cast") == ["cast"]
    assert nbtools.expand_methods(["icv", "cast"]) == ["icv", "cast"]


@pytest.mark.parametrize(
    "label, labelled",
    [
        ("lora_source", False),
        ("lora_target_dev", True),
        ("kasa_source", False),
        ("kasa_target_dev", True),
        ("few_shot", True),
        ("cast", False),
        ("cross_task_icl_similar", False),
        ("cast_target_dev", True),
        ("icv_target_dev", True),
    ],
)
def test_build_method_applies_variant_and_shared_params(label, labelled):
    shared = {"k": 2, "m": 5, "steps": 3, "n_target": 8, "not_a_param_anywhere": 1}
    method = nbtools.build_method(label, shared, {"cast": {"gamma": 0.0}})
    assert method.uses_target_labels is labelled
    fields = vars(method.params)
    for name in ("k", "m", "steps", "n_target"):
        if name in fields:
            assert fields[name] == shared[name]
    if label == "cast":
        assert method.params.gamma == 0.0
    with pytest.raises(TypeError, match="unknown parameter"):
        nbtools.build_method(label, {}, {label: {"nope": 1}})


def test_shared_parameters_a_method_does_not_use_are_skipped():
    from castlib.repro import nbtools

    icv = nbtools.build_method("icv", {"layers": [1, 2], "k": 1}, {}, None)
    assert icv.params.layers is None and icv.params.k == 1  # ICV steers every layer
    cast = nbtools.build_method("cast", {"layers": [1, 2], "k": 1}, {}, None)
    assert cast.params.layers == (1, 2)
