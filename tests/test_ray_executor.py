"""The Ray executor: a local Ray head (2 CPUs, so two tasks at a time), joined at 127.0.0.1:PORT,
runs a small grid of notebooks made in tmp_path; the result tables equal the sequential
executor's.

Ray itself rewrites a loopback address to the machine's own IP before connecting, so the head
listens on all interfaces (its default) rather than on 127.0.0.1 alone."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the kill test uses POSIX signals")

import nbformat  # noqa: E402
import pandas as pd  # noqa: E402

from castlib.repro.runs import aggregate, load_config, run_batch  # noqa: E402
from castlib.repro.runs.cli import main  # noqa: E402
from castlib.repro.runs.ray_executor import RayConnectionError, check_address, run_batch_ray  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

PARAMETERS = 'mode = "ok"\nvalue = 1\noutput_dir = "."\n'
BODY = """import json, os
if mode == "fail":
    raise RuntimeError("deliberate failure")
if mode == "kill":
    os.kill(os.getppid(), 9)  # the papermill kernel's parent is the Ray worker
    os._exit(1)
names = ("CASTLIB_ACTIVATION_STORE", "CASTLIB_FIT_STORE")
stores = {name: os.environ.get(name) for name in names} if mode == "env" else {}
with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump([{"value": value, "square": value * value, "mode": mode, **stores}], f)
with open(os.path.join(output_dir, "note.txt"), "w") as f:
    f.write(f"value {value}")
"""


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def _config(tmp_path: Path, name: str, runs: list[dict], **top) -> Path:
    path = tmp_path / f"{name}.yaml"
    doc = {"output_dir": str(tmp_path / name), "kernel": "python3", "runs": runs, **top}
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head on this machine with 2 CPUs (two worker processes at a time), no GPU;
    yields (its address as 127.0.0.1:PORT, its node IP)."""
    from ray.cluster_utils import Cluster

    old = {key: os.environ.get(key) for key in ("PYTHONPATH", "TMPDIR", "RAY_TMPDIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old["PYTHONPATH"]) if p)
    # the workers' private run folders (left behind by the killed task) go under pytest's tmp;
    # Ray's own session folder stays where it was (its socket paths must stay short)
    os.environ["RAY_TMPDIR"] = old["RAY_TMPDIR"] or tempfile.gettempdir()
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("ray_workers"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
    )
    try:
        port = cluster.address.rsplit(":", 1)[1]
        yield f"127.0.0.1:{port}", cluster.head_node.node_ip_address
    finally:
        cluster.shutdown()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _tables(output_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    aggregate(output_dir, figures=False)
    summary = pd.read_csv(output_dir / "summary.csv").sort_values("run_id", ignore_index=True)
    runs = pd.read_csv(output_dir / "runs.csv").sort_values("run_id", ignore_index=True)
    return summary, runs.drop(columns=["seconds"])


def test_ray_matches_sequential_records_failures_and_resumes(cluster, tmp_path):
    nb = _notebook(tmp_path / "tiny.ipynb")
    entries = [
        {"notebook": str(nb), "name": "grid", "grid": {"value": [1, 2, 3]}},
        {"notebook": str(nb), "name": "broken", "parameters": {"mode": "fail"}},
        {"notebook": str(nb), "name": "killed", "parameters": {"mode": "kill"}, "num_cpus": 1},
    ]
    seq_cfg = _config(tmp_path, "seq", entries[:2])
    ray_cfg = _config(tmp_path, "ray", entries, num_cpus=1)
    assert all(r.resources == {"num_cpus": 1} for r in load_config(ray_cfg).runs)

    seq = run_batch(seq_cfg, progress=False)
    assert [o.status for o in seq] == ["ok", "ok", "ok", "failed"]

    outcomes = run_batch_ray(ray_cfg, address=cluster[0], progress=False)
    status = {o.run.run_id: o.status for o in outcomes}
    assert status == {
        "grid/value=1": "ok",
        "grid/value=2": "ok",
        "grid/value=3": "ok",
        "broken/default": "failed",
        "killed/default": "failed",
    }
    out = tmp_path / "ray"
    # same layout as the sequential executor: run.json, results.json, the executed notebook and
    # whatever else the notebook wrote, under <output_dir>/<run id>/
    for run_id in ("grid/value=1", "grid/value=2", "grid/value=3"):
        names = sorted(p.name for p in (out / run_id).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "seq" / run_id).iterdir())
        assert names == ["note.txt", "results.json", "run.json", "tiny.ipynb"]
        record = json.loads((out / run_id / "run.json").read_text())
        assert (record["status"], record["executor"]) == ("ok", "ray")
        assert record["node"] == cluster[1]
    broken = json.loads((out / "broken/default/run.json").read_text())
    assert broken["error"]["type"] == "RuntimeError"
    assert broken["error"]["message"] == "deliberate failure"
    seq_broken = json.loads((tmp_path / "seq/broken/default/run.json").read_text())
    assert broken["error"]["cell"] == seq_broken["error"]["cell"]
    killed = json.loads((out / "killed/default/run.json").read_text())
    assert killed["status"] == "failed"
    assert "the Ray task died" in killed["error"]["message"]

    seq_summary, seq_runs = _tables(tmp_path / "seq")
    ray_summary, ray_runs = _tables(out)
    pd.testing.assert_frame_equal(ray_summary, seq_summary)
    assert len(ray_summary) == 3
    pd.testing.assert_frame_equal(
        ray_runs[ray_runs.run_id != "killed/default"].reset_index(drop=True), seq_runs
    )

    # a second invocation skips every finished run and retries only the failed ones
    again = run_batch_ray(
        ray_cfg, address=cluster[0], only=["grid"], progress=False
    )  # only the finished runs: nothing to submit, Ray is not even contacted
    assert [o.status for o in again] == ["skipped"] * 3
    before = (out / "grid/value=1/run.json").read_text()
    code = main([str(ray_cfg), "--executor", "ray", "--address", cluster[0], "--no-progress"])
    assert code == 1  # the broken and killed runs fail again
    assert (out / "grid/value=1/run.json").read_text() == before


def test_tasks_see_the_batch_activation_store_and_fit_store(cluster, tmp_path):
    """As under the sequential executor, a task's kernel gets the batch's on-disk activation
    store and the config's fit_store (the cluster's workers share this disk)."""
    for name in ("CASTLIB_ACTIVATION_STORE", "CASTLIB_FIT_STORE"):
        if os.environ.get(name) is not None:
            pytest.skip(f"${name} is set here; it would win over the batch's folder")
    nb = _notebook(tmp_path / "tiny.ipynb")
    entry = {"notebook": str(nb), "name": "env", "parameters": {"mode": "env"}}
    with_fits = _config(tmp_path, "fits", [entry], fit_store=str(tmp_path / "kept_fits"))
    without = _config(tmp_path, "plain", [entry])
    assert [o.status for o in run_batch_ray(with_fits, address=cluster[0], progress=False)] == [
        "ok"
    ]
    assert [o.status for o in run_batch_ray(without, address=cluster[0], progress=False)] == ["ok"]
    got = json.loads((tmp_path / "fits/env/default/results.json").read_text())[0]
    assert got["CASTLIB_ACTIVATION_STORE"] == str((tmp_path / "fits/.activation_store").resolve())
    assert got["CASTLIB_FIT_STORE"] == str((tmp_path / "kept_fits").resolve())
    got = json.loads((tmp_path / "plain/env/default/results.json").read_text())[0]
    assert got["CASTLIB_ACTIVATION_STORE"] == str((tmp_path / "plain/.activation_store").resolve())
    assert got["CASTLIB_FIT_STORE"] is None


def test_gpu_run_on_a_cluster_without_gpu_is_unschedulable(cluster, tmp_path):
    nb = _notebook(tmp_path / "tiny.ipynb")
    cfg = _config(
        tmp_path,
        "gpu",
        [
            {"notebook": str(nb), "name": "gpu", "num_gpus": 1},
            {"notebook": str(nb), "name": "cpu", "parameters": {"value": 5}},
        ],
    )
    t0 = time.monotonic()
    outcomes = run_batch_ray(cfg, address=cluster[0], progress=False)
    assert time.monotonic() - t0 < 120
    by_id = {o.run.run_id: o for o in outcomes}
    assert by_id["cpu/default"].status == "ok"
    assert by_id["gpu/default"].status == "failed"
    assert "unschedulable" in by_id["gpu/default"].error
    assert "num_gpus=1" in by_id["gpu/default"].error
    record = json.loads((tmp_path / "gpu/gpu/default/run.json").read_text())
    assert record["error"]["type"] == "Unschedulable"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_that_does_not_answer_fails_fast(tmp_path, capsys):
    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(RayConnectionError, match=f"no Ray cluster answers at '127.0.0.1:{port}'"):
        check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    # a host that drops packets times out in the TCP probe; where a proxy accepts every
    # connection (as in some sandboxes), the Ray handshake times out instead
    t0 = time.monotonic()
    with pytest.raises(RayConnectionError, match="no Ray cluster answers at '10.255.255.1:6379'"):
        check_address("10.255.255.1:6379", timeout=1.0, handshake_timeout=15.0)
    assert time.monotonic() - t0 < 30
    with pytest.raises(RayConnectionError, match="is not HOST:PORT"):
        check_address("nowhere")

    nb = _notebook(tmp_path / "tiny.ipynb")
    cfg = _config(tmp_path, "bad", [{"notebook": str(nb)}])
    code = main([str(cfg), "--executor", "ray", "--address", f"127.0.0.1:{port}"])
    assert code == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_config_resources_are_validated(tmp_path):
    from castlib.repro.runs import ConfigError

    nb = _notebook(tmp_path / "tiny.ipynb")
    with pytest.raises(ConfigError, match="'num_gpus' must be a non-negative number"):
        load_config(_config(tmp_path, "neg", [{"notebook": str(nb), "num_gpus": -1}]))
    with pytest.raises(ConfigError, match="'num_cpus' must be a non-negative number"):
        load_config(_config(tmp_path, "txt", [{"notebook": str(nb)}], num_cpus="two"))
    with pytest.raises(ConfigError, match="did you mean 'num_gpus'"):
        load_config(_config(tmp_path, "typo", [{"notebook": str(nb), "num_gpu": 1}]))
    runs = load_config(
        _config(tmp_path, "ok", [{"notebook": str(nb), "num_gpus": 0.5}], num_cpus=2)
    ).runs
    assert runs[0].resources == {"num_cpus": 2, "num_gpus": 0.5}
    assert "num_gpus" not in runs[0].parameters


def test_address_needs_the_ray_executor(tmp_path):
    nb = _notebook(tmp_path / "tiny.ipynb")
    cfg = _config(tmp_path, "x", [{"notebook": str(nb)}])
    with pytest.raises(SystemExit):
        main([str(cfg), "--address", "127.0.0.1:1"])
