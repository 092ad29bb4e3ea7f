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


def _notebook_with_parameters(path, source):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# x"), cell, nbformat.v4.new_code_cell("y = 2")]
    nbformat.write(nb, path)
    return path


def test_notebook_parameters_reads_the_names_of_the_parameters_cell(tmp_path, monkeypatch):
    _notebook_with_parameters(tmp_path / "nb.ipynb", "b = 1  # first\na = [1]\nb = 3\n")
    monkeypatch.chdir(tmp_path)
    # the names (in the cell's order) come from the file, the values from the namespace (where
    # papermill's injected cell has replaced the defaults); other names are left out
    namespace = {"a": [2], "b": 5, "y": 2, "lm": object()}
    assert nbtools.notebook_parameters(namespace, "nb.ipynb") == {"b": 5, "a": [2]}
    assert list(nbtools.params_table(nbtools.notebook_parameters(namespace, "nb.ipynb")).index) == [
        "b",
        "a",
    ]
    with pytest.raises(NameError, match=r"\['a'\] are assigned in the parameters cell"):
        nbtools.notebook_parameters({"b": 1}, "nb.ipynb")
    with pytest.raises(FileNotFoundError, match="other.ipynb not found"):
        nbtools.notebook_parameters(namespace, "other.ipynb")


def test_method_plan_shares_what_each_method_accepts_and_applies_aliases():
    parameters = {
        "model": "m",
        "targets": ["sst2"],  # a task list, never LoRA's target modules
        "methods": ["cast", "cast_target_dev", "icv", "cross_task_icl_random", "lora_source"],
        "seeds": [0],
        "k": 2,
        "m": 3,
        "layers": None,  # None: each method's default
        "train_steps": 5,
        "icl_k": 1,
        "cast_alphas": [0.5],
        "icv_alphas": None,
        "method_params": {"cast_target_dev": {"gamma": 0.0}},
        "data_dir": None,
    }
    plan = nbtools.method_plan(parameters)
    assert plan.labels == parameters["methods"]
    assert plan.shared == {"k": 2, "m": 3, "steps": 5}
    assert plan.overrides == {
        "cross_task_icl": {"k": 1},
        "cast": {"alphas": [0.5]},
        "cast_target_dev": {"alphas": [0.5], "gamma": 0.0},  # keeps cast's overrides
    }
    built = {label: plan.build(label) for label in plan.labels}
    assert tuple(built["cast"].params.alphas) == (0.5,) and built["cast"].params.m == 3
    assert built["cast_target_dev"].params.gamma == 0.0
    assert built["cross_task_icl_random"].params.k == 1
    assert built["lora_source"].params.targets == methods.get("lora").Params().targets
    assert built["lora_source"].params.steps == 5
    assert built["icv"].params.alphas == methods.get("icv").Params().alphas
