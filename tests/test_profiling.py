"""castlib.profiling: the one meter of wall time and peak memory (and its two thin views)."""

from __future__ import annotations

import pytest
import torch

from castlib.methods.shared_eval import measure
from castlib.profiling import profile
from castlib.repro import nbtools


def test_profile_sees_a_held_cpu_allocation():
    with profile("cpu") as prof:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, alive when the block exits
        x.add_(1)
    assert prof.growth_mb >= 48, prof
    assert prof.peak_bytes >= prof.base_bytes > 0
    assert prof.seconds > 0 and "RSS" in prof.method
    del x


def test_profile_fills_in_after_an_exception():
    with pytest.raises(RuntimeError), profile("cpu") as prof:
        raise RuntimeError("boom")
    assert prof.seconds > 0 and prof.peak_bytes >= prof.base_bytes


def test_views_report_growth_and_absolute_peak():
    with measure(torch.device("cpu")) as stats, nbtools.peak_memory("cpu") as mem:
        x = torch.ones(16 * 2**20 // 4)
        x.add_(1)
    assert set(stats) == {"seconds", "peak_memory_mb"} and stats["seconds"] > 0
    assert mem["peak_mb"] > stats["peak_memory_mb"] >= 0  # absolute includes the process
    del x
