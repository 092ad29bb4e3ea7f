"""The remaining baselines (lora, kasa, function_vector, i2cl) under the methods protocol."""

import json

import pytest
import torch

import castlib.methods as methods
from castlib.hooks import HookGroup
from castlib.methods.adapters.kasa import KaSA
from castlib.methods.adapters.layers import target_modules, weight_matrix
from castlib.methods.adapters.lora import LoRA
from castlib.methods.function_vector import (
    FunctionVector,
    _Patcher,
    function_vector,
    head_effects,
    head_layout,
    mean_head_outputs,
    out_projection,
)
from castlib.methods.i2cl import I2CL
from castlib.padding import encode
from castlib.testing import FAMILIES, tiny_model
from tests.conftest import make_task
from tests.test_adapters import assert_same_snapshot, logits, one_thread, snapshot  # noqa: F401
from tests.test_methods import guarded

for _cls in (LoRA, KaSA, FunctionVector, I2CL):
    methods.register(_cls)

SELECT = {"m": 6, "n_candidates": 20, "n_queries": 8, "graph_k": 3}
ADAPT = {"batch_size": 8, "r": 4, "steps": 4, "lr": 1e-2, "train_batch_size": 4, "progress": False}
FV = {
    "batch_size": 8,
    "n_tune": 4,
    "layers": (1, 2),
    "top_heads": (2, 4),
    "k": 2,
    "n_prompts": 4,
    "n_corrupted": 3,
}
I2 = {"batch_size": 8, "n_demos": 4, "steps": 4, "progress": False}

CASES = [
    ("lora", {**ADAPT, **SELECT}),
    ("lora", {**ADAPT, "train_on": "target_dev", "n_target": 8}),
    ("kasa", {**ADAPT, **SELECT}),
    ("kasa", {**ADAPT, "train_on": "target_dev"}),
    ("function_vector", FV),
    ("function_vector", {**FV, "protocol": "target_dev", "head_layers": (0, 1)}),
    ("i2cl", I2),
    ("i2cl", {**I2, "n_demos": None, "demos_per_class": 2}),
]


@pytest.fixture()
def source():
    return make_task("src", n_train=40, n_test=4, seed=1)


@pytest.fixture()
def target():
    return make_task("tgt", n_train=12, n_test=6, seed=2)


def strip(rec):
    return {k: v for k, v in rec.items() if not k.endswith(("seconds", "memory_mb"))}


@pytest.mark.parametrize("name, params", CASES)
def test_method_protocol(lm, source, target, name, params, tmp_path):
    state = snapshot(lm.model)
    before = logits(lm)
    method = methods.get(name)(**params)
    method.fit(lm, [guarded(source)], guarded(target), seed=0)
    rec = method.evaluate(lm, target, limit=5)
    # the loaded model is left exactly as found
    assert torch.equal(logits(lm), before)
    assert_same_snapshot(state, snapshot(lm.model))
    assert set(methods.RESULT_FIELDS) <= set(rec)
    assert rec["n"] == 5 and rec["method"] == name and 0 <= rec["accuracy"] <= 1
    assert rec["trainable_params"] > 0 or name == "function_vector"
    assert rec["fit_seconds"] > 0 and rec["peak_memory_mb"] >= 0
    if rec.get("tuning_grid") or rec.get("choice_grid"):  # a method that chose on tuning rows
        assert 0 <= rec["tune_seconds"] <= rec["fit_seconds"]  # timed apart, part of the fit
    json.dumps(rec)
    again = methods.get(name)(**params).fit(lm, [source], target, seed=0)
    assert strip(again.evaluate(lm, target, limit=5)) == strip(rec)  # deterministic per seed
    method.save(tmp_path / "m")
    reloaded = methods.load(tmp_path / "m")
    rec2 = reloaded.evaluate(lm, target, limit=5)
    assert [p["log_probs"] for p in method.last_result.predictions] == [
        p["log_probs"] for p in reloaded.last_result.predictions
    ]
    assert strip(rec2) == strip(rec)
    assert torch.equal(logits(lm), before)


def test_method_changes_outputs_only_inside_applied(lm, source, target):
    before = logits(lm)
    for cls, params in ((LoRA, ADAPT), (KaSA, ADAPT), (I2CL, I2)):
        method = cls(**{**params, "train_on": "target_dev"} if cls is not I2CL else params)
        method.fit(lm, [source], target, seed=0)
        with method.applied(lm):
            inside = logits(lm)
        assert not torch.equal(inside, before), cls.name
        assert torch.equal(logits(lm), before), cls.name


def test_lora_source_samples_are_cast_selection(lm, source, target):
    lora = LoRA(**ADAPT, **SELECT, selection_gamma=0.3).fit(lm, [source], target, seed=4)
    cast = methods.get("cast")(  # the default n_tune: the rows held out for tuning match
        **SELECT, gamma=0.3, k=2, alphas=(1.0,), layers=(1,), batch_size=8
    )
    cast.fit(lm, [source], target, seed=4)
    assert lora.info["selected_ids"] == cast.info["selected_ids"]
    assert lora.info["n_train"] == 6


def test_target_dev_trains_on_at_most_32_target_train_examples(lm, source):
    big = make_task("tgt", n_train=40, n_test=3, seed=5)
    kasa = KaSA(**ADAPT, train_on="target_dev").fit(lm, [source], guarded(big), seed=0)
    train_ids = {f"tgt:{ex.id}" for ex in big.train}
    assert kasa.info["n_train"] == 32 and set(kasa.info["selected_ids"]) <= train_ids
    with pytest.raises(ValueError, match="n_target"):
        LoRA(train_on="target_dev", n_target=33)
    with pytest.raises(ValueError, match="train_on"):
        LoRA(train_on="test")


def test_trainable_params_count_the_adapter(lm, source, target):
    names = target_modules(lm)
    shapes = [weight_matrix(lm.model.get_submodule(n)).shape for n in names]
    r = ADAPT["r"]
    lora_n = sum(r * (o + i) for o, i in shapes)
    lora = LoRA(**ADAPT, train_on="target_dev").fit(lm, [source], target)
    kasa = KaSA(**ADAPT, train_on="target_dev").fit(lm, [source], target)
    assert lora.info["trainable_params"] == lora_n
    assert kasa.info["trainable_params"] == lora_n + r * len(names)
    i2cl = I2CL(**I2).fit(lm, [source], target)
    assert i2cl.info["trainable_params"] == 4 * lm.n_layers  # (context, query) x (attn, mlp)
    assert [len(c[t]) for c in i2cl.info["coefficients"].values() for t in c] == [lm.n_layers] * 4


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_head_effects_cached_equal_full_patched_forward(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    means = mean_head_outputs(lm, ["good film review", "bad movie the a very"])
    n_heads, _ = head_layout(lm)
    heads = [(layer, h) for layer in range(lm.n_layers) for h in range(n_heads)]
    prompts = ["the movie was good film bad . Answer: positive the movie", "a bad review Answer:"]
    gold = [5, 9]
    cie = head_effects(lm, prompts, gold, means, heads, heads_batch=5)
    patcher = _Patcher(means)
    with HookGroup() as hooks, torch.inference_mode():
        patcher.install(lm, hooks)
        for i, prompt in enumerate(prompts):
            ids = torch.as_tensor(encode(lm.tokenizer, [prompt]))
            patcher.rows = []
            base = torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[gold[i]]
            for j in (0, len(heads) // 2, len(heads) - 1):
                patcher.rows = [heads[j]]
                p = torch.softmax(lm.model(input_ids=ids).logits[0, -1], -1)[gold[i]]
                assert float(cie[i, j]) == pytest.approx(float(p - base), abs=1e-6)
    assert not any(out_projection(b)._forward_pre_hooks for b in lm.blocks)  # removed
    assert float(cie.abs().max()) > 0


def test_function_vector_is_the_heads_output_projection(tokenizer):
    lm = tiny_model("gpt2", tokenizer=tokenizer)  # Conv1D projection with a bias
    means = mean_head_outputs(lm, ["good film review", "bad movie"])
    n_heads, d = head_layout(lm)
    heads = [(1, 0), (1, 3), (2, 2)]
    expected = torch.zeros(lm.hidden_size)
    for layer, h in heads:
        w = weight_matrix(out_projection(lm.blocks[layer])).detach()  # [hidden, heads * d]
        expected += w[:, h * d : (h + 1) * d] @ means[layer, h]
    torch.testing.assert_close(function_vector(lm, means, heads), expected, atol=1e-5, rtol=1e-5)
    assert n_heads * d == lm.hidden_size


def test_function_vector_choice_and_grid(lm, source, target):
    fv = FunctionVector(**FV).fit(lm, [source], target, seed=1)
    grid = fv.info["tuning_grid"]
    # the unsteered model, then (K, layer) slots of 2 K x 2 layers, 5 alphas each (20 steered)
    assert [(g["top_heads"], g["alpha"]) for g in grid[:1]] == [(None, 0.0)]
    assert {(g["top_heads"], g["layer"]) for g in grid[1:]} == {(2, 1), (2, 2), (4, 1), (4, 2)}
    assert len(grid) == fv.params.n_configs == 21
    best = max(grid, key=lambda g: (g["accuracy"], g["gold_logp"]))
    assert (fv.info["layer"], fv.info["top_heads"]) == (best["layer"], best["top_heads"])
    assert fv.info["alpha"] == best["alpha"] and fv.info["steered"], "the toy grid steers"
    assert len(fv.info["heads"]) == fv.info["top_heads"]
    aie = fv.info["head_aie"]
    top = sorted(aie, key=lambda k: -aie[k])[: fv.info["top_heads"]]
    assert {f"{lay}.{h}" for lay, h in fv.info["heads"]} == set(top)


def test_registered_names_and_bad_params():
    assert {"lora", "kasa", "function_vector", "i2cl"} <= set(methods.available())
    with pytest.raises(ValueError, match="top_heads"):
        FunctionVector(top_heads=())
    with pytest.raises(ValueError, match="warmup"):
        I2CL(warmup=1.5)
    with pytest.raises(ValueError, match="beta"):
        KaSA(beta=-1.0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "opt", "phi3", "gemma3"])
def test_peft_lora_attach_and_remove_across_families(family, tokenizer):
    from castlib.methods.adapters.lora import PeftLoraAdapter

    lm = tiny_model(family, tokenizer=tokenizer)
    before, state = logits(lm), snapshot(lm.model)
    adapter = PeftLoraAdapter.build(lm.model, target_modules(lm), r=2, alpha=4.0, seed=0)
    for key, t in adapter.tensors.items():
        if key.endswith("lora_B"):
            adapter.tensors[key] = torch.full_like(t, 0.05)
    with adapter.attach(lm.model) as handle:
        assert len(handle.parameters()) == 2 * len(adapter.names)
        inside = logits(lm)
    assert not torch.equal(inside, before)
    assert torch.equal(logits(lm), before)
    assert_same_snapshot(state, snapshot(lm.model))
    with adapter.attach(lm.model):  # the weights were synced back unchanged
        assert torch.equal(logits(lm), inside)


@pytest.mark.parametrize("family", FAMILIES)
def test_i2cl_reads_the_residual_contributions(family, tokenizer):
    """h_l - h_{l-1} = attention contribution + MLP contribution, at the last token."""
    from castlib.methods.i2cl import context_vectors
    from castlib.record import record_activations

    lm = tiny_model(family, tokenizer=tokenizer)
    text = ["the movie was good and the film great . Answer: positive"]
    c_attn, c_mlp = context_vectors(lm, text)
    h = record_activations(lm, text)[0]
    torch.testing.assert_close(h[1:] - h[:-1], (c_attn + c_mlp)[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3", "gemma3"])
def test_merged_adapters_equal_the_adapter_modules(family, tokenizer):
    """Folding the adapter into the weights computes what the wrapper modules compute, and the
    weights come back bit-identical, also after an exception inside the block."""
    from castlib.methods.adapters.kasa import KaSAAdapter
    from castlib.methods.adapters.layers import apply_adapter, merged_weights
    from castlib.methods.adapters.lora import PeftLoraAdapter

    lm = tiny_model(family, tokenizer=tokenizer)
    before, state = logits(lm), snapshot(lm.model)
    names = target_modules(lm)
    lora = PeftLoraAdapter.build(lm.model, names, r=2, alpha=4.0, seed=0)
    for key, t in lora.tensors.items():
        if key.endswith("lora_B"):
            lora.tensors[key] = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
    kasa = KaSAAdapter.build(
        lm.model, names, r=2, seed=0, alpha=4.0, beta=0.0, gamma=0.0, sigma_l2=0.0
    )
    with torch.no_grad():
        for n in names:
            kasa.update(n).L.normal_(generator=torch.Generator().manual_seed(2))
    for adapter, attach in ((lora, lora.attach), (kasa, lambda m: apply_adapter(m, kasa))):
        with attach(lm.model):
            wrapped = logits(lm)
        with merged_weights(lm.model, adapter.weight_deltas()):
            merged = logits(lm)
        assert not torch.allclose(wrapped, before, atol=1e-3)
        torch.testing.assert_close(merged, wrapped, atol=2e-4, rtol=1e-4)
        assert torch.equal(logits(lm), before)
    with pytest.raises(RuntimeError, match="boom"):
        with merged_weights(lm.model, lora.weight_deltas()):
            raise RuntimeError("boom")
    assert_same_snapshot(state, snapshot(lm.model))
    with pytest.raises(ValueError, match="delta for"):
        with merged_weights(lm.model, {names[0]: torch.zeros(3, 3)}):
            pass
    assert_same_snapshot(state, snapshot(lm.model))


def test_adapter_methods_merge_or_wrap_at_inference(lm, source, target):
    """merge=True (the default) and merge=False give the same predictions."""
    merged = LoRA(**ADAPT, train_on="target_dev").fit(lm, [source], target, seed=0)
    wrapped = LoRA(**ADAPT, train_on="target_dev", merge=False).fit(lm, [source], target, seed=0)
    a, b = merged.evaluate(lm, target), wrapped.evaluate(lm, target)
    assert [p["pred"] for p in merged.last_result.predictions] == [
        p["pred"] for p in wrapped.last_result.predictions
    ]
    assert a["accuracy"] == b["accuracy"]
    for x, y in zip(merged.last_result.predictions, wrapped.last_result.predictions, strict=True):
        assert x["log_probs"] == pytest.approx(y["log_probs"], abs=1e-4)


def test_adapters_share_cast_selection_params():
    import dataclasses

    from castlib.methods.cast import CAST, SelectionParams

    names = {f.name for f in dataclasses.fields(SelectionParams)}
    for cls in (CAST, LoRA, KaSA):
        assert issubclass(cls.Params, SelectionParams)
        assert names <= {f.name for f in dataclasses.fields(cls.Params)}
    cast = KaSA(m=5, n_candidates=20, graph_k=3, selection_gamma=0.25, gamma=0.9).cast()
    p = cast.params
    assert (p.m, p.n_candidates, p.graph_k, p.gamma) == (5, 20, 3, 0.25)


def test_methods_register_themselves_with_presets():
    from castlib.methods import registry

    assert methods.get("lora") is LoRA and methods.get("kasa") is KaSA
    assert [p.label for p in methods.presets("lora")] == ["lora_source", "lora_target_dev"]
    assert methods.preset("kasa_target_dev").params == {"train_on": "target_dev"}
    assert methods.preset("cast") is None
    with pytest.raises(ValueError, match="already registered"):

        class Other(methods.Method):
            name = "cast"

        registry.register(Other)
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        methods.get("nope")
