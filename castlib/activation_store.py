"""Recorded activations kept for reuse: the same prompts at the same layers are run once.

A batch of notebooks records the same prompts again and again (every method and seed records
the zero-shot states of source examples, the candidate embeddings of CAST's selection, ...).
`ActivationStore` keeps ``record_activations`` rows under the key

    sha256(model fingerprint | padding side | pad id | layers | prompt token ids)

in memory (least-recently-used, bounded in bytes) and, when given a folder, on disk as one
safetensors file per row, so that the notebooks of one batch run (the batch runner, `castlib run`, points every
kernel at one folder through ``$CASTLIB_ACTIVATION_STORE``) share it. The key holds the
prompt's token ids, not its text, so two tokenizers that split a prompt differently (one adds
BOS, the other does not; other special tokens) never share a row.

`model_fingerprint` hashes the model's class, config and, for every parameter and buffer, its
name, shape, dtype and *every* value (sha256 of the raw bytes): a store recorded with other
weights (another checkpoint, a merged adapter, one edited value) or another dtype never
matches. Hashing reads every weight once; `ActivationStore.fingerprint` keeps the digest of a
model and hashes again only when its state token changes: each tensor's storage address,
shape, dtype and torch version counter (bumped by every in-place operation, ``param.add_``,
``load_state_dict``, an optimizer step) and a strided sample of up to 4,096 of its values. An
edit that bypasses the version counter (through ``param.data`` or a numpy view) and misses the
sample is not seen: call `ActivationStore.forget` after such an edit.

What the store never serves: a model with anything hooked into it (`castlib.steer`'s steering,
any forward hook or pre-hook on any submodule, torch's global module hooks, a patched
``forward``): `castlib.record.record_activations` bypasses the store then, since the key cannot
describe a hook. A stored row is the value the first recording computed; recomputing it in
another batch can differ by float rounding of the padding (<= 1e-5 in float32), never more.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["ActivationStore", "model_fingerprint", "STORE_ENV", "store_from_env"]

#: The environment variable naming an on-disk store folder (set by the batch runner, `castlib run`).
STORE_ENV = "CASTLIB_ACTIVATION_STORE"

_SAMPLE = 4096


def _tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from (("buffer:" + name, buf) for name, buf in model.named_buffers())


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's values as bytes on the CPU (any dtype, bfloat16 included)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).cpu().numpy())


def _offloaded(model: torch.nn.Module) -> bool:
    return any(t.device.type == "meta" for _, t in _tensors(model))


def _header(model: torch.nn.Module) -> hashlib._Hash:
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    return digest


def model_fingerprint(model: torch.nn.Module) -> str | None:
    """A hex digest of ``model``'s class, config, and every parameter's and buffer's name,
    shape, dtype and values; None when some weights are not in memory (offloaded by
    accelerate to ``meta``/disk), since their values cannot be read: such a model never uses
    a store. Reads every weight (see `ActivationStore.fingerprint` for the cached form)."""
    if _offloaded(model):
        return None
    digest = _header(model)
    with torch.no_grad():
        for name, tensor in _tensors(model):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def state_token(model: torch.nn.Module) -> str:
    """A cheap digest that changes when `model_fingerprint` would be expected to: each
    tensor's name, storage address, shape, dtype, device, torch version counter, and a strided
    sample of up to 4,096 of its values."""
    digest = _header(model)
    with torch.no_grad():
        for name, tensor in _tensors(model):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sample = flat[::step][:_SAMPLE].contiguous()
            digest.update(
                f"{name}:{tensor.data_ptr()}:{tuple(tensor.shape)}:{tensor.dtype}:"
                f"{tensor.device}:{tensor._version}".encode()
            )
            digest.update(memoryview(sample.view(torch.uint8).cpu().numpy()))
    return digest.hexdigest()


class ActivationStore:
    """Rows of recorded activations by (model fingerprint, padding, layers, prompt tokens).

    Args:
        folder: where rows are also written and looked up (None: memory only).
        max_memory_mb: the in-memory part's bound; least recently used rows go first.
    """

    def __init__(self, folder: str | Path | None = None, max_memory_mb: float = 1024.0) -> None:
        if max_memory_mb < 0:
            raise ValueError(f"max_memory_mb must be >= 0, got {max_memory_mb}")
        self.folder = Path(folder) if folder is not None else None
        self.max_bytes = int(max_memory_mb * 2**20)
        self._rows: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        #: model -> (state token, full fingerprint): hashed again when the token changes
        self._fingerprints: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, str | None]]
        self._fingerprints = weakref.WeakKeyDictionary()

    def fingerprint(self, model: torch.nn.Module) -> str | None:
        """`model_fingerprint` of ``model``, computed again only when its `state_token`
        changed since the last call (None for a model with offloaded weights)."""
        if _offloaded(model):
            return None
        token = state_token(model)
        known = self._fingerprints.get(model)
        if known is not None and known[0] == token:
            return known[1]
        digest = model_fingerprint(model)
        self._fingerprints[model] = (token, digest)
        return digest

    def forget(self, model: torch.nn.Module) -> None:
        """Drop ``model``'s cached fingerprint (after an edit its version counters cannot
        show, e.g. through ``param.data``): the next use hashes every weight again."""
        self._fingerprints.pop(model, None)

    @staticmethod
    def key(fingerprint: str, layers: Sequence[int], tokens: Sequence[int] | str) -> str:
        """The row key of one prompt: its token ids (or, for callers that key by text, the
        text) under ``fingerprint`` (the model's and everything else that changes a row)."""
        what = tokens if isinstance(tokens, str) else "ids:" + ",".join(map(str, tokens))
        text = f"{fingerprint}|{','.join(map(str, layers))}|{what}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def _remember(self, key: str, row: torch.Tensor) -> None:
        size = row.numel() * row.element_size()
        if size > self.max_bytes:
            return
        if key in self._rows:
            self._rows.move_to_end(key)
            return
        self._rows[key] = row
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._rows.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def get(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The stored row (a ``shape`` float32 tensor) or None; a file of another shape or an
        unreadable file counts as missing and is replaced on the next `put`."""
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        elif self.folder is not None and self._path(key).is_file():
            try:
                row = load_file(str(self._path(key)))["row"]
            except Exception:  # noqa: BLE001 - a torn or foreign file is a miss, not an error
                row = None
            if row is not None and (tuple(row.shape) != shape or row.dtype != torch.float32):
                row = None
            if row is not None:
                self._remember(key, row)
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row

    def put(self, key: str, row: torch.Tensor) -> None:
        """Keep ``row`` (copied, float32, CPU) in memory and, with a folder, on disk: written
        to a temporary file of a unique name in the same folder and renamed over the row's
        file, so concurrent writers of one key (threads or processes) never collide or leave a
        torn file; the last rename wins, and every writer wrote the same row."""
        row = row.detach().to("cpu", torch.float32).contiguous().clone()
        self._remember(key, row)
        if self.folder is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            try:
                save_file({"row": row}, tmp)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        where = f"folder={str(self.folder)!r}" if self.folder else "memory only"
        return f"ActivationStore({where}, rows in memory={len(self)}, hits={self.hits}, misses={self.misses})"


def store_from_env() -> ActivationStore:
    """A memory store, backed by the folder ``$CASTLIB_ACTIVATION_STORE`` names, if set."""
    folder = os.environ.get(STORE_ENV) or None
    return ActivationStore(folder)
