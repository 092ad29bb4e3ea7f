"""The Ray executor without an address: it starts a local Ray, runs the batch on it and stops
it. Kept apart from tests/test_ray_executor.py so that module's Ray head (a module fixture) is
shut down before this one starts: two Ray instances and their kernels on a 2-core machine
compete for the cores while the kernels start."""

from __future__ import annotations

import os
import sys

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Ray's local head is POSIX here")

from castlib.repro.runs.ray_executor import run_batch_ray  # noqa: E402
from tests.test_ray_executor import REPO, _config, _notebook, _tables  # noqa: E402


def test_without_address_a_local_ray_runs_the_batch_and_stops(tmp_path):
    nb = _notebook(tmp_path / "tiny.ipynb")
    cfg = _config(tmp_path, "local", [{"notebook": str(nb), "grid": {"value": [4, 5]}}])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    try:
        outcomes = run_batch_ray(cfg, num_cpus=2, progress=False)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    assert [o.status for o in outcomes] == ["ok", "ok"], [o.error for o in outcomes]
    assert not ray.is_initialized()
    summary, _ = _tables(tmp_path / "local")
    assert summary["square"].tolist() == [16, 25]
