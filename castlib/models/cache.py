"""The dequantised cache of the embedded models.

The dequantised weights are cached as safetensors under ``$CASTLIB_CACHE/<name>`` (default
``~/.cache/castlib``); the cache is written to a temporary folder, checked, and renamed into
place, and a manifest with the SHA-256 of every file is written last, so a partial or corrupt
cache is detected (and rebuilt) instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .embedded import EMBEDDED_MODEL, EmbeddedModel, embedded_spec
from .gguf import assemble
from .language_model import wrap_model

__all__ = ["cache_dir", "embedded_model_path"]

_MANIFEST = "castlib_manifest.json"
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """castlib's cache folder: ``$CASTLIB_CACHE``, else ``~/.cache/castlib``."""
    return Path(os.environ.get("CASTLIB_CACHE", Path.home() / ".cache" / "castlib")).expanduser()


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


def _build_embedded_cache(folder: Path, spec: EmbeddedModel) -> None:
    """Assemble ``spec``'s GGUF, dequantise it with transformers (float32) and save it as
    safetensors into ``folder`` (written to a temporary folder, checked, renamed into place;
    the manifest with every file's SHA-256 is written last)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        gguf_path, source = assemble(spec, tmp / "gguf")
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
    spec = embedded_spec(name)
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
