"""Real-model tier: the embedded Gemma 3 270M on a few examples of the shared data."""

import pytest
import torch

import castlib
from castlib.prompts import FewShot, zero_shot

pytestmark = pytest.mark.real_model


def test_load_record_steer_evaluate(gemma, repo_data):
    assert gemma.n_layers == 18 and gemma.hidden_size == 640
    task = castlib.load_task("sst2", repo_data)
    examples = list(task.test[:6])
    zs = [zero_shot(task, ex) for ex in examples]
    fs = [FewShot(tuple(task.train[:4]))(task, ex) for ex in examples]
    a0 = castlib.record_activations(gemma, zs, layers=[3, 9], batch_size=3)
    a1 = castlib.record_activations(gemma, fs, layers=[3, 9], batch_size=3)
    assert a0.shape == (6, 2, 640) and torch.isfinite(a0).all()
    # oracle parity on the real model, one prompt: the hook on block 9 reads hidden_states[10].
    # One prompt per batch gives the oracle's shapes, so only float rounding may differ.
    enc = gemma.tokenizer(zs[0], return_tensors="pt")
    with torch.no_grad():
        hs = gemma.model(**enc, output_hidden_states=True).hidden_states
    single = castlib.record_activations(gemma, zs[:1], layers=[9], batch_size=1)
    torch.testing.assert_close(single[0, 0], hs[10][0, -1].float(), atol=1e-4, rtol=1e-4)
    # Batched with padding: other kernel shapes, so float32 rounding grows with the
    # activation's scale (CI saw 1.5e-4 on an entry near 0.04 of a vector whose largest is ~5e3).
    scale = float(single.abs().max())
    torch.testing.assert_close(a0[0, 1], single[0, 0], atol=1e-5 * scale, rtol=1e-4)

    vector = castlib.SteeringVector.from_tensor(
        (a1 - a0).mean(0), model_id=gemma.name, n_layers=gemma.n_layers, layers=[3, 9]
    )
    hooks_before = [dict(b._forward_hooks) for b in gemma.blocks]
    base = castlib.evaluate(gemma, task, examples=examples, batch_size=3)
    with castlib.steer(gemma, vector, alpha=0.0, layers=[9]):
        same = castlib.evaluate(gemma, task, examples=examples, batch_size=3)
    with castlib.steer(gemma, vector, alpha=4.0, layers=[9]):
        steered = castlib.evaluate(gemma, task, examples=examples, batch_size=3)
    assert base.n == steered.n == 6
    assert [p["log_probs"] for p in base.predictions] == [p["log_probs"] for p in same.predictions]
    assert [p["log_probs"] for p in base.predictions] != [
        p["log_probs"] for p in steered.predictions
    ]
    assert [dict(b._forward_hooks) for b in gemma.blocks] == hooks_before


def test_multiple_choice_task(gemma, repo_data):
    task = castlib.load_task("arc_easy", repo_data)
    res = castlib.evaluate(gemma, task, limit=4, batch_size=4)
    assert res.n == 4 and 0 <= res.accuracy <= 1
    assert {p["pred"] for p in res.predictions} <= set(task.labels)
