import pytest
import torch

from castlib.record import record_activations


def oracle(lm, prompt):
    """Independent reference: transformers' own hidden states, one unpadded prompt.

    ``hidden_states[l + 1]`` is the output of block l for inner blocks (the last entry is after
    the final norm on most families, so only blocks 0..L-2 are compared)."""
    enc = lm.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    return torch.stack([hs[layer + 1][0, -1] for layer in range(lm.n_layers - 1)]).float()


def test_matches_output_hidden_states_oracle(family_lm, prompts):
    acts = record_activations(family_lm, prompts, batch_size=len(prompts))
    assert acts.shape == (len(prompts), family_lm.n_layers, family_lm.hidden_size)
    assert acts.dtype == torch.float32
    for i, p in enumerate(prompts):
        torch.testing.assert_close(acts[i, :-1], oracle(family_lm, p), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_unbatched(family_lm, prompts, side):
    batched = record_activations(family_lm, prompts, batch_size=len(prompts), padding_side=side)
    single = torch.cat([record_activations(family_lm, [p], batch_size=1) for p in prompts])
    assert (batched - single).abs().max() <= 1e-5


def test_layer_subset_is_sorted_and_consistent(lm, prompts):
    full = record_activations(lm, prompts)
    sub = record_activations(lm, prompts, layers=[2, 0, -1])
    assert torch.equal(sub, full[:, [0, 2, 3]])


def test_no_lm_head_and_no_deeper_block(lm, prompts):
    calls = {"head": 0, "deep": 0}

    def count(key):
        def hook(*_):
            calls[key] += 1

        return hook

    h1 = lm.model.get_output_embeddings().register_forward_hook(count("head"))
    h2 = lm.blocks[2].register_forward_hook(count("deep"))
    try:
        record_activations(lm, prompts, layers=[1])
    finally:
        h1.remove()
        h2.remove()
    assert calls == {"head": 0, "deep": 0}
    assert not any(b._forward_hooks for b in lm.blocks)


def test_bad_input(lm):
    with pytest.raises(ValueError, match="empty prompt list"):
        record_activations(lm, [])
    with pytest.raises(IndexError, match="out of range"):
        record_activations(lm, ["a"], layers=[lm.n_layers])
    with pytest.raises(TypeError):
        record_activations(lm, "a single string")
