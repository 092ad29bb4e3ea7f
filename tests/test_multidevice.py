"""Models split by accelerate (device maps, CPU and disk offload): recording and steering stay
exact and castlib's hooks compose with accelerate's own.

No GPU is needed: accelerate's offload hooks keep weights off the module (on the ``meta``
device) and bring them in around each block's forward, exactly as they do between GPUs, so a
model dispatched with a disk/CPU offload map exercises the same hook stacking.
"""

from __future__ import annotations

import copy

import pytest
import torch

from castlib import record_activations, steer
from castlib.models import input_device, load_model, wrap_model
from castlib.padding import encode, pad
from castlib.testing import tiny_model

accelerate = pytest.importorskip("accelerate")

FAMILIES = ("llama", "gpt2", "gemma3")


def _device_map(lm) -> dict[str, str]:
    """Every top-level module on CPU except odd decoder blocks, which go to disk."""
    prefix = lm.blocks_path
    device_map: dict[str, str] = {}

    def walk(module: torch.nn.Module, name: str) -> None:
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if full == prefix:
                for i in range(len(child)):
                    device_map[f"{full}.{i}"] = "disk" if i % 2 else "cpu"
            elif prefix.startswith(full + "."):
                walk(child, full)
            else:
                device_map[full] = "cpu"

    walk(lm.model, "")
    return device_map


def _dispatched(lm, how: str, tmp_path):
    model = copy.deepcopy(lm.model)
    if how == "cpu_offload":
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        accelerate.dispatch_model(
            model, device_map=_device_map(lm), main_device="cpu", offload_dir=str(tmp_path)
        )
    out = wrap_model(model, lm.tokenizer, name=lm.name)
    # the offloaded weights are really gone from the modules: accelerate's hooks bring them in
    assert any(p.device.type == "meta" for p in out.blocks[1].parameters())
    assert any(hasattr(m, "_hf_hook") for m in out.blocks[1].modules())
    return out


def _logits(lm, prompts) -> torch.Tensor:
    ids, mask = pad(encode(lm.tokenizer, prompts), lm.tokenizer.pad_token_id, "left", lm.device)
    with torch.inference_mode():
        return lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().cpu()


@pytest.mark.parametrize("how", ["cpu_offload", "disk_map"])
@pytest.mark.parametrize("family", FAMILIES)
def test_offloaded_model_records_and_steers_exactly(family, how, tokenizer, prompts, tmp_path):
    lm = tiny_model(family, tokenizer=tokenizer)
    split = _dispatched(lm, how, tmp_path)
    assert split.device == torch.device("cpu")

    ref = record_activations(lm, prompts, batch_size=3)
    got = record_activations(split, prompts, batch_size=3)
    assert got.device.type == "cpu"
    assert torch.equal(ref, got)

    g = torch.Generator().manual_seed(1)
    vec = {layer: torch.randn(lm.hidden_size, generator=g) for layer in (1, 2)}
    for positions in ("last", "all"):
        with steer(lm, vec, alpha=3.0, positions=positions):
            want = _logits(lm, prompts)
            want_acts = record_activations(lm, prompts, layers=[3], batch_size=3)
        with steer(split, vec, alpha=3.0, positions=positions):
            have = _logits(split, prompts)
            have_acts = record_activations(split, prompts, layers=[3], batch_size=3)
        assert torch.equal(want, have), positions
        assert torch.equal(want_acts, have_acts), positions
        assert not torch.equal(want, _logits(lm, prompts))  # the steering did something
    # castlib's hooks are gone, accelerate's stay and still work
    assert torch.equal(_logits(split, prompts), _logits(lm, prompts))
    assert all(not block._forward_hooks for block in split.blocks)


def test_load_model_device_map_offloads_to_disk(tokenizer, prompts, tmp_path):
    lm = tiny_model("llama", tokenizer=tokenizer)
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    split = load_model(
        str(folder),
        device_map="auto",
        max_memory={"cpu": n_bytes // 2},
        dtype="float32",
        offload_folder=str(tmp_path / "offload"),
    )
    assert "disk" in set(split.model.hf_device_map.values())
    assert split.device == torch.device("cpu")
    assert torch.equal(
        record_activations(lm, prompts, batch_size=2),
        record_activations(split, prompts, batch_size=2),
    )
    vec = torch.ones(lm.hidden_size)
    with steer(lm, vec, alpha=2.0, layers=[3]):
        want = _logits(lm, prompts)
    with steer(split, vec, alpha=2.0, layers=[3]):
        have = _logits(split, prompts)
    assert torch.equal(want, have)


def test_load_model_device_map_arguments():
    with pytest.raises(ValueError, match="max_memory= needs device_map="):
        load_model("unused", max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="not both"):
        load_model("unused", device="cpu", device_map="auto")


def test_input_device_of_plain_model(lm):
    assert input_device(lm.model) == next(lm.model.parameters()).device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_blocks_split_between_gpu_and_cpu(family, tokenizer, prompts):
    """Even blocks on the GPU, odd ones on the CPU (cuda:1 when there are two GPUs): indices,
    vectors and recorded states cross devices inside the hooks."""
    lm = tiny_model(family, tokenizer=tokenizer)
    other = "cuda:1" if torch.cuda.device_count() > 1 else "cpu"
    device_map = {
        name: ("cuda:0" if device == "cpu" else other) for name, device in _device_map(lm).items()
    }
    model = copy.deepcopy(lm.model)
    accelerate.dispatch_model(model, device_map=device_map, main_device="cuda:0")
    split = wrap_model(model, lm.tokenizer, name=lm.name)
    assert split.device == torch.device("cuda", 0)
    assert {p.device.type for p in split.model.parameters()} == {"cuda", torch.device(other).type}

    got = record_activations(split, prompts, batch_size=3)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, record_activations(lm, prompts, batch_size=3))
    vec = {layer: torch.ones(lm.hidden_size) for layer in (1, 2)}
    with steer(lm, vec, alpha=3.0):
        want = _logits(lm, prompts)
    with steer(split, vec, alpha=3.0):
        have = _logits(split, prompts)
    torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)
