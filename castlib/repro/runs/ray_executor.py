"""Run a batch grid on a Ray cluster: one Ray task per notebook run.

``castlib run CONFIG --executor ray [--address ADDR]`` calls `run_batch_ray`. Each
run that is not already complete (`castlib.repro.runs.execute.is_complete`, unless ``force``) becomes one Ray
task with the resources the config asks for (``num_cpus``, default 1, and ``num_gpus``, default
0, at the config's top level or per entry). The task executes the run with papermill exactly
as the sequential executor does (`castlib.repro.runs.execute.execute_run`, same kernel rule, same run.json),
but into a private temporary folder on whichever node runs it, and returns that folder's files;
the driver writes them to ``<output_dir>/<run id>/`` (run.json last, with ``executor`` and
``node`` added). So results come back whether or not the nodes share a disk, and the output
layout, resuming and aggregation (`castlib.repro.runs.aggregate.aggregate`) are the sequential executor's.

What every node needs: the same Python environment with castlib importable, and the notebooks
(and the data they read) at the same absolute paths as on the driver, e.g. the repository
checked out at one path on a shared or replicated disk. Only the results travel.

Stores: each task points its kernel at the batch's activation store
(``<output_dir>/.activation_store``) and, when the config names one, at its ``fit_store``
folder, as the sequential executor does (`castlib.repro.runs.execute.run_batch`; a variable the worker's
environment sets already wins). Both are the driver's absolute paths: on a shared disk every
node reads and adds to the same stores (their writes are atomic renames, so concurrent tasks
never leave a torn entry; two tasks that need the same missing fit may both compute it); on
replicated disks each node keeps its own copy, and fits made on a node stay there.

Failures: a notebook error is recorded by `execute_run` in the task; a task that dies (its
worker or node killed, out of memory) is recorded as failed by the driver with Ray's error.
Tasks are not retried (``max_retries=0``): rerunning the batch retries failed runs. A run that
asks for more CPUs or GPUs than any live node of the cluster has is recorded as failed
("unschedulable") without being submitted, instead of waiting forever; the check uses the
nodes alive when the batch starts.

Connecting: a Ray session this process already opened (``ray.init``) is used as it is;
otherwise ``address=None`` starts a local Ray instance for the batch (shut down at the end);
``"auto"`` joins the cluster started on this machine with ``ray start``; ``HOST:PORT`` joins a
cluster's head (its GCS port, 6379 by default) and ``ray://HOST:PORT`` goes through Ray Client.
Before this process joins, `check_address` makes sure a Ray cluster answers there, so a wrong
address fails fast with `RayConnectionError` instead of Ray's own connect loop (which retries for
minutes): a TCP connection must open within ``CONNECT_TIMEOUT_S`` seconds (no listener, no route,
no such host fail at once), then a throwaway Ray driver in a subprocess must join within
``HANDSHAKE_TIMEOUT_S`` seconds (something that accepts connections but is not a Ray cluster,
e.g. a proxy, times out there).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Run, RunConfig, runnable_config, select_runs
from .execute import (
    RunOutcome,
    error_record,
    execute_run,
    is_complete,
    run_record_base,
    store_for_kernels,
    timestamp,
)
from .layout import RESULTS_FILE, RUN_FILE, STORE_FOLDER, jsonable, write_json

__all__ = ["EXECUTORS", "RayConnectionError", "run_batch_ray", "check_address"]

EXECUTORS = ("sequential", "ray")
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 60.0
_HANDSHAKE = (
    "import sys, ray\n"
    "ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)\n"
    "print(ray.cluster_resources().get('CPU', 0))\n"
    "ray.shutdown()\n"
)
_START_HINT = (
    "start one with `ray start --head` on the head node and pass the address it prints "
    "(HOST:6379 by default)"
)
_RAY_HINT = 'Ray is not installed: pip install -e ".[ray]" (or pip install "ray>=2.9")'


class RayConnectionError(ConnectionError):
    """No Ray cluster answers at the given address."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(_RAY_HINT) from exc
    return ray


def check_address(
    address: str,
    timeout: float = CONNECT_TIMEOUT_S,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
) -> None:
    """Raise `RayConnectionError` unless a Ray cluster answers at ``HOST:PORT`` (or
    ``ray://HOST:PORT``): a TCP connection within ``timeout`` seconds, then a Ray driver joining
    within ``handshake_timeout`` seconds. ``"auto"``/``"local"`` are left to Ray."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise RayConnectionError(
            f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or "
            "ray://10.0.0.5:10001 for Ray Client, or 'auto' for a cluster started here)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise RayConnectionError(
            f"no Ray cluster answers at {address!r} ({reason} after at most {timeout:g}s); "
            f"{_START_HINT}"
        ) from exc
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _HANDSHAKE, address],
            capture_output=True,
            text=True,
            timeout=handshake_timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise RayConnectionError(
            f"no Ray cluster answers at {address!r}: the port is open but a Ray driver could "
            f"not join within {handshake_timeout:g}s (not a Ray head's GCS port?); {_START_HINT}"
        ) from exc
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-3:]
        raise RayConnectionError(
            f"no Ray cluster answers at {address!r}: joining it failed ({' '.join(tail)}); "
            f"{_START_HINT}"
        )


def _execute_remote(
    run: Run, kernel: str | None, store: Path, fit_store: Path | None = None
) -> dict[str, Any]:
    """Body of the Ray task: run into a private folder, with the batch's activation store and
    fit store (see the module docstring), and return the folder's files."""
    import tempfile

    try:
        import ray

        node = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - the node name is informative only
        node = socket.gethostname()
    with (
        tempfile.TemporaryDirectory(prefix="castlib-ray-") as tmp,
        store_for_kernels(store, fit_store),
    ):
        outcome = execute_run(run, tmp, kernel_name=kernel, force=True)
        run_dir = run.run_dir(tmp)
        files = {
            path.relative_to(run_dir).as_posix(): path.read_bytes()
            for path in sorted(run_dir.rglob("*"))
            if path.is_file()
        }
    return {"status": outcome.status, "seconds": outcome.seconds, "error": outcome.error,
            "files": files, "node": node}  # fmt: skip


def _write_back(run: Run, output_dir: Path, result: dict[str, Any]) -> None:
    """Write a finished task's files into the run directory (run.json last)."""
    run_dir = run.run_dir(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RUN_FILE, RESULTS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    files = dict(result["files"])
    record_bytes = files.pop(RUN_FILE, None)
    for name, data in files.items():
        target = run_dir / name
        if run_dir.resolve() not in target.resolve().parents:
            raise ValueError(f"refusing to write {name!r} outside {run_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    record = json.loads(record_bytes) if record_bytes else _failed_record(run, None, "")
    record.update(executor="ray", node=result.get("node"))
    write_json(run_dir / RUN_FILE, record)


def _failed_record(run: Run, exc: BaseException | None, message: str) -> dict[str, Any]:
    error = (
        error_record(exc)
        if exc is not None
        else {"type": "Unschedulable", "message": message, "exception": None, "cell": None}
    )
    if exc is not None and message:
        error["message"] = message
    return {
        **run_record_base(run),
        "resources": jsonable(run.resources),
        "finished": timestamp(),
        "seconds": None,
        "error": error,
        "executor": "ray",
    }


def _record_failure(
    run: Run, output_dir: Path, exc: BaseException | None, message: str
) -> RunOutcome:
    run_dir = run.run_dir(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RUN_FILE, RESULTS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    record = _failed_record(run, exc, message)
    write_json(run_dir / RUN_FILE, record)
    error = record["error"]
    return RunOutcome(run, "failed", 0.0, f"{error['type']}: {error['message']}")


def _ask(run: Run) -> dict[str, float]:
    return {
        "num_cpus": run.resources.get("num_cpus", 1),
        "num_gpus": run.resources.get("num_gpus", 0),
    }


def _unschedulable(ray: Any, run: Run) -> str | None:
    """Why no live node can ever run ``run``, or None when one can."""
    ask = _ask(run)
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for res in nodes:
        if res.get("CPU", 0) >= ask["num_cpus"] and res.get("GPU", 0) >= ask["num_gpus"]:
            return None
    have = ", ".join(f"CPU {r.get('CPU', 0):g} GPU {r.get('GPU', 0):g}" for r in nodes) or "none"
    return (
        f"unschedulable: the run asks for num_cpus={ask['num_cpus']:g}, "
        f"num_gpus={ask['num_gpus']:g} on one node, but no live node of the Ray cluster has "
        f"that (nodes: {have}); lower the config's num_cpus/num_gpus or add such a node"
    )


def run_batch_ray(
    config: RunConfig | str | Path,
    *,
    address: str | None = None,
    only: str | Sequence[str] | None = None,
    force: bool = False,
    kernel_name: str | None = None,
    progress: bool = True,
    num_cpus: int | None = None,
) -> list[RunOutcome]:
    """Execute the config's runs as Ray tasks (resuming); returns one outcome per run.

    Args:
        config: a RunConfig or the path of a YAML config.
        address: the cluster to join (see the module docstring); None starts a local Ray.
        only, force, kernel_name, progress: as in `castlib.repro.runs.execute.run_batch`.
        num_cpus: CPUs of the local Ray started when ``address`` is None (default: all).

    Raises:
        RayConnectionError: nothing answers at ``address``.
        ImportError: Ray is not installed.
    """
    from tqdm.auto import tqdm

    ray = _import_ray()
    cfg = runnable_config(config)
    kernel = kernel_name or cfg.kernel
    runs = select_runs(cfg.runs, only)
    output_dir = cfg.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    store = (output_dir / STORE_FOLDER).resolve()

    outcomes: dict[str, RunOutcome] = {}
    todo = []
    for run in runs:
        if not force and is_complete(run, output_dir):
            outcomes[run.run_id] = RunOutcome(run, "skipped")
        else:
            todo.append(run)
    if not todo:
        return [outcomes[r.run_id] for r in runs]

    started_here = False
    if not ray.is_initialized():
        if address is not None:
            check_address(address)
            init = {"address": address}
        else:
            init = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
        ray.init(**init, log_to_driver=False, configure_logging=False)
        started_here = True
    try:
        remote = ray.remote(max_retries=0)(_execute_remote)
        pending: dict[Any, Run] = {}
        for run in todo:
            why = _unschedulable(ray, run)
            if why is not None:
                outcomes[run.run_id] = _record_failure(run, output_dir, None, why)
                continue
            ref = remote.options(**_ask(run), name=f"castlib:{run.run_id}").remote(
                run, kernel, store, cfg.fit_store
            )
            pending[ref] = run
        t0 = time.perf_counter()
        with tqdm(total=len(todo), desc="runs (ray)", unit="run", disable=not progress) as bar:
            bar.update(len(todo) - len(pending))
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    ref = done[0]
                    run = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - a dead task is a failed run
                        message = f"the Ray task died: {type(exc).__name__}: {exc}"
                        outcome = _record_failure(run, output_dir, exc, message[:2000])
                    else:
                        _write_back(run, output_dir, result)
                        outcome = RunOutcome(
                            run, result["status"], result["seconds"], result["error"]
                        )
                    outcomes[run.run_id] = outcome
                    bar.update(1)
                    if progress:
                        tag = "[ok]" if outcome.status == "ok" else "[FAILED]"
                        extra = f"({outcome.seconds:.1f}s)" if outcome.status == "ok" else ""
                        tqdm.write(
                            f"{tag} {run.run_id} {extra or outcome.error}".rstrip(),
                            file=sys.stderr,
                        )
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        if progress:
            tqdm.write(f"ray: {len(todo)} runs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    finally:
        if started_here:
            ray.shutdown()
    return [outcomes[r.run_id] for r in runs]
