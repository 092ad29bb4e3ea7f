"""Checks a batch makes before it loads any model: can this machine run these units at all?

`preflight` refuses, with a `ConfigError` naming the run and the parameter, a unit that

* asks for a CUDA device (``device: cuda``) on a machine where torch sees none;
* asks for a dtype that does not exist or that its device cannot run (``dtype: bfloat16`` on a
  CUDA device without bfloat16 support; `castlib.models.loading.resolve_dtype` names the dtypes);
* runs an embedded model on CPU on a machine whose memory in all is less than the model's
  measured need (`castlib.models.embedded.EmbeddedModel.cpu_memory_gb`, float32): the kernel
  would be killed part-way, after minutes of loading.

It runs before the output folder is created, so a refused batch leaves nothing behind. Models
given as a Hugging Face id or a path are not sized (their size is known only once loaded). The
Ray executor does not call it: its units run on other machines, which Ray places by the
resources each unit asks for.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...models.embedded import EMBEDDED_MODELS
from ...models.loading import resolve_device, resolve_dtype
from .config import ConfigError, Run

__all__ = ["preflight", "machine_memory_gb"]


def machine_memory_gb() -> float:
    """This machine's physical memory, in GB (10^9 bytes)."""
    import psutil

    return psutil.virtual_memory().total / 1e9


def preflight(runs: Iterable[Run], memory_gb: float | None = None) -> None:
    """Raise `ConfigError` for the first run this machine cannot run (see the module
    docstring); ``memory_gb``: the machine's memory (default: `machine_memory_gb`)."""
    import torch

    total = machine_memory_gb() if memory_gb is None else memory_gb
    for run in runs:
        params = run.parameters
        device = str(params.get("device") or "auto")
        try:
            kind = resolve_device(device).type  # "auto": CUDA, else MPS, else CPU
        except (RuntimeError, ValueError) as exc:  # torch.device("gpu") and the like
            raise ConfigError(f"{run.run_id}: parameter 'device': {exc}") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"{run.run_id}: device {device!r}, but torch sees no CUDA device on this machine "
                f"(use device: cpu, or auto to take CUDA where there is one)"
            )
        dtype = params.get("dtype")
        if dtype is not None:
            try:
                dt = resolve_dtype(dtype)
            except ValueError as exc:
                raise ConfigError(f"{run.run_id}: parameter 'dtype': {exc}") from None
            if dt == torch.bfloat16 and kind == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError(
                    f"{run.run_id}: dtype {dtype!r} on a CUDA device without bfloat16 "
                    f"support; use float16 or auto"
                )
        spec = EMBEDDED_MODELS.get(str(params.get("model")))
        if spec is not None and kind == "cpu" and spec.cpu_memory_gb is not None:
            if total < spec.cpu_memory_gb:
                raise ConfigError(
                    f"{run.run_id}: model {spec.name!r} needs about {spec.cpu_memory_gb:g} GB of "
                    f"memory on CPU (measured), and this machine has {total:.1f} GB in all; run "
                    f"this unit on a larger machine (or with the Ray executor)"
                )
