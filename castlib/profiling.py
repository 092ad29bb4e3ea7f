"""Wall time and peak memory of a block of code: the one meter castlib uses everywhere.

    with profile(lm.device) as prof:
        method.fit(...)
    prof.seconds, prof.peak_mb (absolute), prof.growth_mb (above the level at entry)

Memory, by device:
    CUDA  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at entry (the
          device is synchronised at entry and exit, so the time covers the queued kernels);
          the base is ``memory_allocated`` at entry.
    else  the process's resident set size (psutil), sampled every ``interval`` seconds by a
          background thread and once more at exit: torch's CPU allocations bypass Python's
          allocator, so tracemalloc cannot see them. The base is the RSS at entry.

``peak`` includes everything already allocated (model weights), so it is the number to compare
between methods run one after the other; ``growth = max(peak - base, 0)`` is what the block
itself added. ``settle=True`` runs ``gc.collect`` (and, on glibc, ``malloc_trim``) at entry so
the base does not carry freed-but-unreturned memory (used by the benchmark).
Used by `castlib.methods.base` (result records), the notebooks' helpers (`nbtools`) and ``benchmarks/bench.py``.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["Profile", "profile"]

MiB = 2**20


@dataclass
class Profile:
    """What `profile` measured (filled in when the block exits).

    Attributes:
        seconds: wall-clock seconds of the block.
        base_bytes: memory in use at entry (CUDA allocated bytes, or process RSS).
        peak_bytes: the peak during the block (same measure; includes ``base_bytes``).
        method: how memory was measured, in words.
    """

    seconds: float = 0.0
    base_bytes: int = 0
    peak_bytes: int = 0
    method: str = ""

    @property
    def growth_bytes(self) -> int:
        """Peak memory above the level at entry (>= 0)."""
        return max(self.peak_bytes - self.base_bytes, 0)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MiB

    @property
    def growth_mb(self) -> float:
        return self.growth_bytes / MiB


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so RSS measurements start low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class _RSSSampler:
    """The process's peak RSS, sampled in a daemon thread every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        import psutil

        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


@contextmanager
def profile(
    device: torch.device | str, interval: float = 0.005, settle: bool = False
) -> Iterator[Profile]:
    """Measure the block's wall time and peak memory on ``device`` (see the module docstring).

    Args:
        device: where the block's tensors live (``lm.device``).
        interval: RSS sampling period in seconds (not CUDA).
        settle: collect garbage (and trim the C heap) at entry.
    """
    dev = torch.device(device)
    prof = Profile()
    if settle:
        gc.collect()
    cuda = dev.type == "cuda"
    sampler = None
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        prof.base_bytes = torch.cuda.memory_allocated(dev)
        prof.method = "torch.cuda.max_memory_allocated"
    else:
        if settle:
            _malloc_trim()
        sampler = _RSSSampler(interval)
        prof.base_bytes = sampler.base
        prof.method = f"psutil RSS sampled every {interval * 1000:g} ms" + (
            ", after gc and malloc_trim" if settle else ""
        )
    start = time.perf_counter()
    try:
        yield prof
    finally:
        if cuda:
            torch.cuda.synchronize(dev)
            prof.peak_bytes = int(torch.cuda.max_memory_allocated(dev))
        else:
            sampler.stop()
            prof.peak_bytes = int(sampler.peak)
        prof.seconds = time.perf_counter() - start
