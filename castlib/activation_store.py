"""Recorded activations kept for reuse: the same prompts at the same layers are run once.

A batch of notebooks records the same prompts again and again (every method and seed records
the zero-shot states of source examples, the candidate embeddings of CAST's selection, ...).
`ActivationStore` keeps ``record_activations`` rows under the key

    sha256(model fingerprint | layers | prompt)

in memory (least-recently-used, bounded in bytes) and, when given a folder, on disk as one
safetensors file per row, so that the notebooks of one batch run (`castlib.repro.runs` points every
kernel at one folder through ``$CASTLIB_ACTIVATION_STORE``) share it.

`model_fingerprint` hashes the model's class, config, dtype and, for every parameter, its name,
shape and an evenly strided sample of up to 4,096 of its values: a store recorded with other
weights (another checkpoint, a merged adapter) or another dtype never matches. A stored row is
the value the first recording computed; recomputing it in another batch can differ by float
rounding of the padding (<= 1e-5 in float32), never more.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["ActivationStore", "model_fingerprint", "STORE_ENV", "store_from_env"]

#: The environment variable naming an on-disk store folder (set by `castlib.repro.runs`).
STORE_ENV = "CASTLIB_ACTIVATION_STORE"

_SAMPLE = 4096


def model_fingerprint(model: torch.nn.Module) -> str | None:
    """A hex digest identifying ``model``'s architecture, dtype and weights (sampled); None
    when some weights are not in memory (offloaded by accelerate to ``meta``/disk), since
    their values cannot be read: such a model never uses a store."""
    if any(param.device.type == "meta" for param in model.parameters()):
        return None
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sample = flat[::step][:_SAMPLE].float().cpu().contiguous()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


class ActivationStore:
    """Rows of recorded activations by (model fingerprint, layers, prompt).

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

    @staticmethod
    def key(fingerprint: str, layers: Sequence[int], prompt: str) -> str:
        text = f"{fingerprint}|{','.join(map(str, layers))}|{prompt}"
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
        """Keep ``row`` (copied, float32, CPU) in memory and, with a folder, on disk (written
        to a temporary file and renamed, so concurrent writers never leave a torn file)."""
        row = row.detach().to("cpu", torch.float32).contiguous().clone()
        self._remember(key, row)
        if self.folder is not None:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            save_file({"row": row}, str(tmp))
            os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        where = f"folder={str(self.folder)!r}" if self.folder else "memory only"
        return f"ActivationStore({where}, rows in memory={len(self)}, hits={self.hits}, misses={self.misses})"


def store_from_env() -> ActivationStore:
    """A memory store, backed by the folder ``$CASTLIB_ACTIVATION_STORE`` names, if set."""
    folder = os.environ.get(STORE_ENV) or None
    return ActivationStore(folder)
