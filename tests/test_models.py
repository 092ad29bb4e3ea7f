import json

import pytest
import torch
from torch import nn

import castlib
from castlib import models
from castlib.models import cache as model_cache
from castlib.models import find_blocks, load_model, resolve_dtype, wrap_model
from castlib.testing import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_found_for_every_family(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    assert lm.n_layers == 4 and lm.hidden_size == 64
    assert isinstance(lm.blocks, nn.ModuleList)


def test_unknown_architecture_names_the_override(lm):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError, match=r"blocks_path='stack'"):
        find_blocks(Odd())
    blocks, path = find_blocks(Odd(), "stack")
    assert path == "stack" and len(blocks) == 1
    with pytest.raises(ValueError, match="does not name"):
        find_blocks(Odd(), "nothing.here")


def test_load_model_from_local_folder(tmp_path, lm):
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert loaded.n_layers == lm.n_layers and loaded.dtype == torch.float32
    a = castlib.record_activations(lm, ["the movie"])
    b = castlib.record_activations(loaded, ["the movie"])
    assert torch.equal(a, b)


def test_unknown_model_name_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="cannot load model 'no-such/model-xyz'"):
        load_model("no-such/model-xyz", device="cpu")


def test_dtype_and_device_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")


def test_layer_checks(lm):
    assert lm.check_layers([-1, 0]) == [0, lm.n_layers - 1]
    with pytest.raises(IndexError, match="out of range"):
        lm.check_layers([lm.n_layers])
    with pytest.raises(ValueError, match="duplicate"):
        lm.check_layers([1, 1])


def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLIB_CACHE", str(tmp_path))
    builds = []

    def fake_build(folder, spec):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        digest = model_cache._sha256(folder / "model.safetensors")
        (folder / model_cache._MANIFEST).write_text(
            json.dumps(
                {"format": model_cache._CACHE_FORMAT, "files": {"model.safetensors": digest}}
            )
        )
        builds.append(folder)

    monkeypatch.setattr(model_cache, "_build_embedded_cache", fake_build)
    folder = models.embedded_model_path()
    assert len(builds) == 1
    assert models.embedded_model_path() == folder and len(builds) == 1  # valid: reused
    (folder / "model.safetensors").write_bytes(b"weightz")  # corrupt, same size
    with pytest.warns(UserWarning, match="corrupt"):
        models.embedded_model_path()
    assert len(builds) == 2
    (folder / model_cache._MANIFEST).unlink()  # partial: manifest is written last
    with pytest.warns(UserWarning):
        models.embedded_model_path()
    assert len(builds) == 3


def test_wrap_model_sets_pad_token(lm):
    from castlib.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.pad_token = None
    wrapped = wrap_model(lm.model, tok)
    assert wrapped.tokenizer.pad_token == tok.eos_token
