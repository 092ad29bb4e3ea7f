import pytest
import torch

import castlib
from castlib.padding import iter_batches
from castlib.steer import steer
from castlib.testing import tiny_model
from castlib.vectors import SteeringVector


def batch_inputs(lm, prompts, side):
    ids = lm.tokenizer(prompts)["input_ids"]
    batch = next(iter_batches(ids, len(ids), lm.tokenizer.pad_token_id, side, sort_by_length=False))
    return batch


class Spy:
    """Observes a block's output before (registered first) or after other hooks."""

    def __init__(self):
        self.outputs = []

    def __call__(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        self.outputs.append(h.detach().clone())


def spy_around(lm, layer, make_steer):
    before, after = Spy(), Spy()
    h1 = lm.blocks[layer].register_forward_hook(before)
    handle = make_steer()
    h2 = lm.blocks[layer].register_forward_hook(after)
    return before, after, [h1, h2], handle


def test_alpha_zero_is_bit_identical(family_lm, prompts):
    batch = batch_inputs(family_lm, prompts, "left")
    with torch.no_grad():
        ref = family_lm.model(**batch.model_inputs()).logits
        v = torch.randn(family_lm.hidden_size)
        with steer(family_lm, v, alpha=0.0, layers=[0, 1], positions="all"):
            out = family_lm.model(**batch.model_inputs()).logits
    assert torch.equal(ref, out)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_steered_output_is_original_plus_alpha_v_exactly_where_intended(
    family_lm, prompts, side, positions
):
    lm = family_lm
    batch = batch_inputs(lm, prompts, side)
    v = torch.randn(lm.hidden_size)
    alpha = 3.0
    layer = 1
    before, after, spies, handle = spy_around(
        lm, layer, lambda: steer(lm, v, alpha=alpha, layers=[layer], positions=positions)
    )
    try:
        with torch.no_grad():
            lm.model(**batch.model_inputs())
    finally:
        handle.remove()
        for h in spies:
            h.remove()
    diff = after.outputs[0] - before.outputs[0]
    mask = batch.attention_mask.bool()
    expected = torch.zeros_like(mask)
    if positions == "all":
        expected[:] = True
    else:
        last = castlib.padding.last_token_index(batch.attention_mask)
        expected[torch.arange(len(prompts)), last] = True
    steered = after.outputs[0][expected]
    torch.testing.assert_close(steered, before.outputs[0][expected] + alpha * v, atol=0, rtol=0)
    assert torch.equal(diff[~expected], torch.zeros_like(diff[~expected]))


def test_untouched_layers_are_bit_identical(lm, prompts):
    batch = batch_inputs(lm, prompts, "left")
    spies = [Spy() for _ in range(lm.n_layers)]
    handles = [b.register_forward_hook(s) for b, s in zip(lm.blocks, spies, strict=True)]
    with torch.no_grad():
        lm.model(**batch.model_inputs())
        with steer(lm, torch.randn(lm.hidden_size), alpha=2.0, layers=[2]):
            lm.model(**batch.model_inputs())
    for h in handles:
        h.remove()
    for layer in (0, 1):
        assert torch.equal(spies[layer].outputs[0], spies[layer].outputs[1])
    assert not torch.equal(spies[3].outputs[0], spies[3].outputs[1])


def test_generation_is_steered_on_every_decode_step(lm):
    prompts = ["the movie was good", "bad film"]
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)  # left padding
    v = torch.randn(lm.hidden_size)
    before, after, spies, handle = spy_around(
        lm, 1, lambda: steer(lm, v, alpha=2.0, layers=[1], positions="last")
    )
    try:
        with torch.no_grad():
            lm.model.generate(
                **enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0
            )
    finally:
        handle.remove()
        for h in spies:
            h.remove()
    assert len(before.outputs) == 4  # prefill + 3 decode steps
    b0, a0 = before.outputs[0], after.outputs[0]
    assert torch.equal(a0[:, -1], b0[:, -1] + 2.0 * v)
    assert torch.equal(a0[:, :-1], b0[:, :-1])
    for b, a in zip(before.outputs[1:], after.outputs[1:], strict=True):
        assert b.shape[1] == 1
        assert torch.equal(a, b + 2.0 * v)


def test_hooks_removed_after_exception(lm):
    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, torch.randn(lm.hidden_size), layers=[0, 3]):
            assert lm.blocks[0]._forward_hooks
            raise RuntimeError("boom")
    assert not any(b._forward_hooks for b in lm.blocks)
    assert not lm.base._forward_pre_hooks


def test_handle_remove(lm):
    handle = steer(lm, torch.randn(lm.hidden_size), layers=[1])
    assert handle.active and lm.blocks[1]._forward_hooks
    handle.remove()
    assert not handle.active and not lm.blocks[1]._forward_hooks


def test_nested_contexts_compose(lm, prompts):
    batch = batch_inputs(lm, prompts, "left")
    v1, v2 = torch.randn(lm.hidden_size), torch.randn(lm.hidden_size)
    before, after = Spy(), Spy()
    h1 = lm.blocks[1].register_forward_hook(before)
    with steer(lm, v1, alpha=1.5, layers=[1], positions="all"):
        with steer(lm, v2, alpha=-0.5, layers=[1], positions="all"):
            h2 = lm.blocks[1].register_forward_hook(after)
            with torch.no_grad():
                lm.model(**batch.model_inputs())
            h2.remove()
    h1.remove()
    torch.testing.assert_close(
        after.outputs[0], before.outputs[0] + 1.5 * v1 - 0.5 * v2, atol=1e-6, rtol=1e-6
    )


def test_norm_preserving_and_replace(lm, prompts):
    batch = batch_inputs(lm, prompts, "right")
    v = torch.randn(lm.hidden_size)
    for kwargs in ({"norm_preserving": True}, {"op": "replace", "alpha": 1.0}):
        before, after, spies, handle = spy_around(
            lm, 2, lambda kw=kwargs: steer(lm, v, layers=[2], positions="all", **kw)
        )
        with torch.no_grad():
            lm.model(**batch.model_inputs())
        handle.remove()
        for h in spies:
            h.remove()
        if "op" in kwargs:
            torch.testing.assert_close(after.outputs[0], v.expand_as(after.outputs[0]))
        else:
            torch.testing.assert_close(
                after.outputs[0].norm(dim=-1), before.outputs[0].norm(dim=-1), rtol=1e-5, atol=1e-5
            )


def test_vector_cast_to_activation_dtype(tokenizer, prompts):
    lm = tiny_model("llama", dtype=torch.bfloat16, tokenizer=tokenizer)
    batch = batch_inputs(lm, prompts, "left")
    v = torch.randn(lm.hidden_size, dtype=torch.float64)
    with torch.no_grad(), steer(lm, v, alpha=1.0, layers=[1]):
        out = lm.model(**batch.model_inputs()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_steering_vector_and_errors(lm, tokenizer):
    sv = SteeringVector(
        layers={1: torch.randn(lm.hidden_size)},
        model_id=lm.name,
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
    )
    with steer(lm, sv, alpha=1.0):
        assert lm.blocks[1]._forward_hooks
    other = tiny_model("llama", hidden=32, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="cannot be applied"):
        steer(other, sv)
    with pytest.raises(IndexError, match="out of range"):
        steer(lm, torch.randn(lm.hidden_size), layers=[99])
    with pytest.raises(ValueError, match="hidden size"):
        steer(lm, torch.randn(lm.hidden_size + 1), layers=[0])
    with pytest.raises(ValueError, match="positions"):
        steer(lm, sv, positions="first")
    with pytest.raises(KeyError, match="not in the steering vector"):
        steer(lm, sv, layers=[2])
    assert not any(b._forward_hooks for b in lm.blocks)


def test_interventions_record_active_steering_and_recording(lm):
    from castlib.steer import active_steer_hooks

    assert lm.interventions == []
    v = torch.ones(lm.hidden_size)
    with steer(lm, v, alpha=1.0, layers=[0]) as outer:
        with steer(lm, v, alpha=2.0, layers=[1, 2]) as inner:
            assert lm.interventions == [outer, inner]
            assert [e.kind for e in lm.interventions] == ["steer", "steer"]
            assert inner.layers == [1, 2]
            assert [h.alpha for h in active_steer_hooks(lm)] == [1.0, 2.0, 2.0]
        assert lm.interventions == [outer]
    assert lm.interventions == [] and active_steer_hooks(lm) == []
    with pytest.raises(RuntimeError, match="boom"), steer(lm, v, alpha=1.0, layers=[0]):
        raise RuntimeError("boom")
    assert lm.interventions == []

    seen = []
    handle = lm.blocks[0].register_forward_hook(
        lambda *args: seen.append([(e.kind, tuple(e.layers)) for e in lm.interventions])
    )
    try:
        with steer(lm, v, alpha=1.0, layers=[1]):
            castlib.record_activations(lm, ["a b"], layers=[0, 2])
    finally:
        handle.remove()
    assert seen == [[("steer", (1,)), ("record", (0, 2))]]
    assert lm.interventions == []
