"""The activation store: rows reused only for the same weights, dtype, layers and prompt."""

from __future__ import annotations

import torch

import castlib.record as record_module
from castlib.activation_store import ActivationStore, model_fingerprint
from castlib.record import record_activations
from castlib.testing import tiny_model

PROMPTS = ["the movie was good", "bad film , not great", "a", "the movie was good"]


class _Restore:
    def __init__(self, real):
        self.real = real

    def remove(self):
        record_module.record_token_ids = self.real


def _count_forwards(lm):
    """Count the recordings that run forward passes (a hook would bypass the store)."""
    calls = {"n": 0}
    real = record_module.record_token_ids

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    record_module.record_token_ids = counting
    return calls, _Restore(real)


def test_store_reuses_rows_and_matches_plain_recording(lm):
    plain = record_activations(lm, PROMPTS, layers=[1, 3])
    store = ActivationStore()
    first = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=0)
    assert store.misses == 3 and len(store) == 3  # the repeated prompt ran once
    calls, handle = _count_forwards(lm)
    try:
        again = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
    finally:
        handle.remove()
    assert calls["n"] == 0 and torch.equal(again, first)
    # other layers: another key
    record_activations(lm, PROMPTS[:1], layers=[2], store=store)
    assert store.misses == 4


def test_other_weights_or_dtype_never_match(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer)
    store = ActivationStore()
    record_activations(lm, PROMPTS, store=store)
    before = model_fingerprint(lm.model)
    with torch.no_grad():
        next(iter(lm.blocks[2].parameters())).add_(1e-3)  # e.g. a merged adapter
    assert model_fingerprint(lm.model) != before
    calls, handle = _count_forwards(lm)
    try:
        changed = record_activations(lm, PROMPTS, store=store)
    finally:
        handle.remove()
    assert calls["n"] > 0
    torch.testing.assert_close(changed, record_activations(lm, PROMPTS), atol=1e-5, rtol=0)
    double = tiny_model("llama", tokenizer=tokenizer, dtype=torch.float64)
    single = tiny_model("llama", tokenizer=tokenizer)
    assert model_fingerprint(double.model) != model_fingerprint(single.model)


def test_disk_store_is_shared_between_instances(lm, tmp_path):
    first = ActivationStore(tmp_path / "store")
    rows = record_activations(lm, PROMPTS, layers=[2], store=first)
    second = ActivationStore(tmp_path / "store")  # another process of the same batch
    calls, handle = _count_forwards(lm)
    try:
        again = record_activations(lm, PROMPTS, layers=[2], store=second)
    finally:
        handle.remove()
    assert calls["n"] == 0 and torch.equal(again, rows) and second.hits == 4


def test_torn_file_is_a_miss_and_is_replaced(lm, tmp_path):
    store = ActivationStore(tmp_path / "store")
    rows = record_activations(lm, PROMPTS[:1], layers=[2], store=store)
    (path,) = (tmp_path / "store").rglob("*.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    fresh = ActivationStore(tmp_path / "store")
    again = record_activations(lm, PROMPTS[:1], layers=[2], store=fresh)
    assert fresh.misses == 1
    torch.testing.assert_close(again, rows, atol=1e-5, rtol=0)
    assert len(path.read_bytes()) > 20


def test_memory_bound_evicts_least_recently_used():
    row = torch.zeros(256)  # 1 KiB
    store = ActivationStore(max_memory_mb=2.5 / 1024)
    for key in "abc":
        store.put(key, row)
    assert len(store) == 2 and store.get("a", (256,)) is None and store.get("c", (256,)) is not None


def test_offloaded_weights_never_use_a_store(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer)
    with torch.device("meta"):
        meta = torch.nn.Parameter(torch.empty(3))
    lm.model.register_parameter("offloaded", meta)  # as accelerate leaves offloaded weights
    assert model_fingerprint(lm.model) is None
