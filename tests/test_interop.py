"""Vectors that travel: llama.cpp control vectors (GGUF), steering-vectors and repeng.

The parity tests need the peers, which live in the benchmark's own environment
(benchmarks/setup_peers.sh makes benchmarks/.venv-bench, layered on the project venv; their pins
predate transformers 5 and numpy 2). `make test-peers` makes it and runs this file there; in the
project venv these tests are skipped, saying how to run them.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from castlib import record_activations, steer
from castlib.interop import (
    from_gguf,
    from_repeng,
    from_steering_vectors,
    import_repeng,
    to_gguf,
    to_repeng,
    to_steering_vectors,
)
from castlib.padding import encode, pad
from castlib.testing import tiny_model
from castlib.vectors import SteeringVector

FAMILIES = ("llama", "gpt2", "qwen2")
STEERED = (1, 2)
ALPHA = 3.0


def _vector(lm, layers=STEERED, seed: int = 0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        layers={layer: torch.randn(lm.hidden_size, generator=g) for layer in layers},
        model_id=lm.name,
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
        method="cast",
        params={"alpha_hint": 4.0, "sources": ["a", "b"]},
    )


def _last_logits(lm, prompts) -> torch.Tensor:
    ids, mask = pad(encode(lm.tokenizer, prompts), lm.tokenizer.pad_token_id, "left", lm.device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return out.logits[:, -1].float()


def _castlib_steered(lm, vector, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    with steer(lm, vector, alpha=ALPHA, positions="all"):
        acts = record_activations(lm, prompts, layers=[3], batch_size=2)
        logits = _last_logits(lm, prompts)
    assert not torch.equal(logits, _last_logits(lm, prompts))  # the vector does something
    return acts, logits


def _write_gguf(path, arch: str, tensors: dict[str, np.ndarray], kv: dict[str, str] = ()):
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in dict(kv).items():
        writer.add_string(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------- GGUF


def test_gguf_round_trip_is_equal_with_metadata(lm, tmp_path):
    vec = _vector(lm, layers=(1, 3))
    path = vec.to_gguf(tmp_path / "sub" / "v.gguf")
    back = SteeringVector.from_gguf(path)
    assert back == vec  # layers bit-exact and every metadata field
    assert back.params == {"alpha_hint": 4.0, "sources": ["a", "b"]}
    assert from_gguf(path, lm) == vec


def test_gguf_follows_llama_cpp_layout(lm, tmp_path):
    """general.architecture, controlvector.* keys, one F32 1-D direction.N per castlib layer N."""
    vec = _vector(lm, layers=(1, 3))
    path = to_gguf(vec, tmp_path / "v.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))

    def text(key):
        field = reader.get_field(key)
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.architecture") == "controlvector"
    assert text("controlvector.model_hint") == "llama"
    field = reader.get_field("controlvector.layer_count")
    assert int(field.parts[field.data[0]][0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer in (1, 3):
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [lm.hidden_size]
        assert torch.equal(torch.from_numpy(np.array(t.data)), vec[layer])


def test_gguf_without_castlib_metadata(lm, tmp_path):
    """A file as llama.cpp's cvector-generator writes it: direction.N is castlib layer N."""
    g = torch.Generator().manual_seed(3)
    dirs = {n: torch.randn(lm.hidden_size, generator=g) for n in (1, 2, 3)}
    path = _write_gguf(
        tmp_path / "foreign.gguf",
        "controlvector",
        {f"direction.{n}": d.numpy() for n, d in dirs.items()},
        {"controlvector.model_hint": "llama"},
    )
    vec = from_gguf(path, lm)
    assert vec.layer_ids == [1, 2, 3]
    assert all(torch.equal(vec[n], dirs[n]) for n in dirs)
    assert (vec.model_id, vec.n_layers, vec.hidden_size) == (lm.name, 4, lm.hidden_size)
    assert vec.params["model_hint"] == "llama"
    assert from_gguf(path, n_layers=4).model_id == "llama"
    with pytest.raises(ValueError, match="pass lm= or n_layers="):
        from_gguf(path)
    with pytest.raises(ValueError, match="only 3 decoder blocks"):
        from_gguf(path, n_layers=3)


def test_gguf_refuses_what_is_not_a_control_vector(lm, tmp_path):
    h = lm.hidden_size
    model_file = _write_gguf(
        tmp_path / "model.gguf", "llama", {"token_embd.weight": np.zeros((8, h), np.float32)}
    )
    with pytest.raises(ValueError, match="general.architecture is 'llama'"):
        from_gguf(model_file, lm)
    other = _write_gguf(
        tmp_path / "other.gguf", "controlvector", {"blk.1.attn": np.zeros(h, np.float32)}
    )
    with pytest.raises(ValueError, match="not named 'direction.<N>'"):
        from_gguf(other, lm)
    empty = _write_gguf(tmp_path / "empty.gguf", "controlvector", {})
    with pytest.raises(ValueError, match="no 'direction.<N>' tensors"):
        from_gguf(empty, lm)
    zero = _write_gguf(
        tmp_path / "zero.gguf", "controlvector", {"direction.0": np.zeros(h, np.float32)}
    )
    with pytest.raises(ValueError, match="direction.0"):
        from_gguf(zero, lm)
    half = _write_gguf(
        tmp_path / "f16.gguf", "controlvector", {"direction.1": np.zeros(h, np.float16)}
    )
    with pytest.raises(ValueError, match="expected F32"):
        from_gguf(half, lm)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        from_gguf(junk, lm)
    with pytest.raises(FileNotFoundError):
        from_gguf(tmp_path / "missing.gguf", lm)


def test_gguf_refuses_another_hidden_size(lm, tokenizer, tmp_path):
    path = _vector(lm).to_gguf(tmp_path / "v.gguf")
    wide = tiny_model("llama", hidden=96, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="hidden size 64, but 'tiny-llama' has hidden size 96"):
        from_gguf(path, wide)
    with pytest.raises(ValueError, match="hidden size 64"):
        from_gguf(path, hidden_size=32)
    deep = tiny_model("llama", layers=6, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="with 4 layers, not 6"):
        from_gguf(path, deep)


def test_to_gguf_refuses_layer_zero(lm, tmp_path):
    vec = _vector(lm, layers=(0, 2))
    with pytest.raises(ValueError, match=r"block 0.*select\(\[2\]\)"):
        vec.to_gguf(tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    assert from_gguf(vec.select([2]).to_gguf(tmp_path / "v.gguf"), lm) == vec.select([2])


# --------------------------------------------------------------------------- steering-vectors


PEERS_HOW = (
    "the parity peers live in benchmarks/.venv-bench: run `make test-peers` (or bash "
    "benchmarks/setup_peers.sh, then benchmarks/.venv-bench/bin/python -m pytest tests/test_interop.py)"
)


@pytest.fixture(scope="module")
def sv():
    return pytest.importorskip(
        "steering_vectors", reason=f"steering-vectors is not installed here; {PEERS_HOW}"
    )


@pytest.fixture(scope="module")
def repeng():
    try:
        return import_repeng()
    except ImportError:
        pytest.skip(f"repeng is not installed here; {PEERS_HOW}")


def test_steering_vectors_round_trip(sv, lm):
    vec = _vector(lm)
    theirs = to_steering_vectors(vec)
    assert isinstance(theirs, sv.SteeringVector)
    assert theirs.layer_type == "decoder_block"
    back = from_steering_vectors(theirs, lm)
    assert back.layer_ids == vec.layer_ids
    assert all(torch.equal(back[k], vec[k]) for k in vec.layer_ids)
    assert (back.model_id, back.n_layers, back.method) == (lm.name, 4, "steering-vectors")
    neg = sv.SteeringVector({-1: vec[2]}, layer_type="decoder_block")
    assert from_steering_vectors(neg, lm).layer_ids == [3]
    with pytest.raises(ValueError, match="layer_type='mlp'"):
        from_steering_vectors(sv.SteeringVector({1: vec[1]}, layer_type="mlp"), lm)


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_vectors_parity(sv, family, tokenizer, prompts):
    """The same vector applied by steering-vectors (every position) and by castlib
    (positions="all") gives the same activations downstream and the same logits."""
    lm = tiny_model(family, tokenizer=tokenizer)
    vec = _vector(lm)
    want_acts, want_logits = _castlib_steered(lm, vec, prompts)
    with to_steering_vectors(vec).apply(lm.model, multiplier=ALPHA, min_token_index=0):
        acts = record_activations(lm, prompts, layers=[3], batch_size=2)
        logits = _last_logits(lm, prompts)
    assert torch.equal(acts, want_acts)
    assert torch.equal(logits, want_logits)


# --------------------------------------------------------------------------- repeng


def test_repeng_round_trip(repeng, lm):
    vec = _vector(lm)
    theirs = to_repeng(vec, model_type="llama")
    assert isinstance(theirs, repeng.extract.ControlVector)
    assert theirs.model_type == "llama"
    back = from_repeng(theirs, lm)
    assert all(torch.equal(back[k], vec[k]) for k in vec.layer_ids)
    assert back.params == {"model_type": "llama"}
    with pytest.raises(ValueError, match="pass lm= or n_layers="):
        from_repeng(theirs)
    with pytest.raises(ValueError, match="out of range for a 2-layer model"):
        from_repeng(theirs, n_layers=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_repeng_parity(repeng, family, tokenizer, prompts):
    """repeng's ControlModel (which adds at every real token) and castlib give the same
    last-token activations downstream and the same last-token logits."""
    lm = tiny_model(family, tokenizer=tokenizer)
    vec = _vector(lm)
    want_acts, want_logits = _castlib_steered(lm, vec, prompts)
    wrapped = repeng.control.ControlModel(lm.model, list(STEERED))
    try:
        wrapped.set_control(to_repeng(vec), coeff=ALPHA)
        acts = record_activations(lm, prompts, layers=[3], batch_size=2)
        logits = _last_logits(lm, prompts)
    finally:
        wrapped.unwrap()
    assert torch.equal(acts, want_acts)
    assert torch.equal(logits, want_logits)


def test_gguf_layer_mapping_agrees_with_repeng(repeng, lm, prompts, tmp_path):
    """direction.N is the output of block N both ways: a file castlib writes, read and applied
    by repeng, steers like castlib; a file repeng writes reads back as the same layers."""
    vec = _vector(lm)
    path = vec.to_gguf(tmp_path / "castlib.gguf")
    theirs = repeng.extract.ControlVector.import_gguf(str(path))
    assert sorted(theirs.directions) == list(STEERED)
    want_acts, want_logits = _castlib_steered(lm, vec, prompts)
    wrapped = repeng.control.ControlModel(lm.model, sorted(theirs.directions))
    try:
        wrapped.set_control(theirs, coeff=ALPHA)
        acts = record_activations(lm, prompts, layers=[3], batch_size=2)
        logits = _last_logits(lm, prompts)
    finally:
        wrapped.unwrap()
    assert torch.equal(acts, want_acts)
    assert torch.equal(logits, want_logits)

    to_repeng(vec, model_type="llama").export_gguf(str(tmp_path / "repeng.gguf"))
    back = from_gguf(tmp_path / "repeng.gguf", lm)
    assert back.layer_ids == list(STEERED)
    assert all(torch.equal(back[k], vec[k]) for k in STEERED)
    assert back.params["model_hint"] == "llama"
