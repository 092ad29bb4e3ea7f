"""Executing a batch's runs: papermill, the kernel they run in, the environment they share.

Execution
---------
Each run executes with papermill into ``<run_dir>/<stem>.ipynb`` with ``output_dir=<run_dir>``
(absolute) added to its parameters. The kernel's working directory is the notebook's own folder,
as in Jupyter and nbval, so the same relative paths (e.g. a ``data_dir`` default) work
interactively, under nbval and here; pass absolute paths (or paths relative to the notebook
folder) in parameters. The kernel is ``--kernel``, else the config's ``kernel``, else the
current interpreter (`castlib.repro.kernels.CurrentEnvKernelManager`): a batch runs in the environment
that started it, whatever kernel specs the user has installed.

A notebook writes ``results.json`` (a list of flat records, or one record) into ``output_dir``.
Each run writes ``<run_dir>/run.json`` with its status (``"ok"``/``"failed"``), parameters,
the code that ran it (``source``: git commit of the notebook's checkout, whether its tracked
files differed and which, `source_state`), timestamps, wall seconds and, on failure, the error type, message, traceback and failing cell. A
run that finishes without a readable ``results.json`` counts as failed. A failed run does not
stop the batch. Rerunning resumes: a run whose run.json says ok with the same parameters and whose
results.json exists is skipped unless ``--force``; failed runs are retried. A forced rerun of a
finished run is written beside it (under ``<output_dir>/.castlib-staging/``, which aggregation
skips) and swapped in only when it succeeds: an interrupted or failed rerun keeps the earlier
result (the rerun's own notebook then names the staging folder as its ``output_dir``).

Every kernel of a (sequential) batch shares one on-disk activation store,
``<output_dir>/.activation_store`` (`castlib.activation_store`), whose ``fits/`` folder keeps the
fits that read no target row (`castlib.methods.fit_store`: I2CL is fitted once per source tasks and
seed). ``fit_store`` moves those fits elsewhere: a folder kept in git lets a long fit, and the
checkpoints it writes while running, carry over to the next machine or session that continues the
batch (the activation store itself is large and stays in the output folder).

``--executor ray [--address ADDR]`` runs each run as a Ray task instead, with the config's
``num_cpus``/``num_gpus`` per run, into the same layout (see `castlib.repro.runs.ray_executor`); the sequential
executor ignores those two keys.

Exit status: 0 when every selected run is ok (or skipped as done), 1 when any run failed,
2 on a configuration or usage error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...activation_store import STORE_ENV
from ...methods.fit_store import FIT_STORE_ENV
from ..kernels import CURRENT_ENV_KERNEL, CurrentEnvKernelManager
from ..versions import environment_versions
from .config import Run, RunConfig, runnable_config, select_runs
from .layout import (
    NEW_SUFFIX,
    OLD_SUFFIX,
    RESULTS_FILE,
    RUN_FILE,
    STAGING_DIR,
    STORE_FOLDER,
    jsonable,
    read_json,
    result_records,
    write_json,
)
from .preflight import preflight

__all__ = [
    "MissingResultsError",
    "RunOutcome",
    "execute_run",
    "is_complete",
    "run_batch",
    "error_record",
    "run_record_base",
    "source_state",
    "store_for_kernels",
    "timestamp",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run in a batch."""

    run: Run
    status: Literal["ok", "failed", "skipped"]
    seconds: float = 0.0
    error: str | None = None


def timestamp() -> str:
    """Now, in UTC, ISO 8601 to the millisecond (run.json's ``started`` and ``finished``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def is_complete(run: Run, output_dir: str | Path) -> bool:
    """True when the run's run.json says ok with the same parameters and results.json exists."""
    return _complete_in(run, run.run_dir(output_dir))


def _complete_in(run: Run, run_dir: Path) -> bool:
    try:
        record = read_json(run_dir / RUN_FILE)
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("status") == "ok"
        and record.get("parameters") == jsonable(run.parameters)
        and (run_dir / RESULTS_FILE).is_file()
    )


def _kernel_and_language(notebook: Path, kernel: str | None) -> tuple[str, str | None]:
    """Kernel to use (an explicit name, else `castlib.repro.kernels.CURRENT_ENV_KERNEL`: the running
    interpreter) and the language papermill needs when the notebook's metadata names none
    (``None`` when it does)."""
    import nbformat

    try:
        metadata = nbformat.read(notebook, as_version=4).metadata
    except Exception:  # noqa: BLE001 - an unreadable notebook fails later with papermill's message
        metadata = {}
    spec = metadata.get("kernelspec") or {}
    known = spec.get("language") or (metadata.get("language_info") or {}).get("name")
    return kernel or CURRENT_ENV_KERNEL, None if known else "python"


class MissingResultsError(RuntimeError):
    """A notebook ran to the end but left no usable results.json."""


def _check_results(path: Path) -> None:
    if not path.is_file():
        raise MissingResultsError(
            f"the notebook finished without writing {RESULTS_FILE} into output_dir ({path.parent})"
        )
    try:
        result_records(read_json(path), path)
    except ValueError as exc:
        raise MissingResultsError(f"unreadable {RESULTS_FILE}: {exc}") from exc


def error_record(exc: BaseException) -> dict[str, Any]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return {
            "type": str(exc.ename),
            "message": str(exc.evalue),
            "exception": type(exc).__name__,
            "cell": {
                "index": exc.cell_index,
                "execution_count": exc.exec_count,
                "source": exc.source,
            },
            "traceback": _ANSI.sub("", "\n".join(exc.traceback))[-8000:],
        }
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "exception": type(exc).__name__,
        "cell": None,
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


def source_state(folder: str | Path, max_changed: int = 20) -> dict[str, Any] | None:
    """The git commit of the checkout holding ``folder``, whether its tracked files differ from
    it, and which (``{"commit": sha, "dirty": bool, "changed": [paths]}``, at most
    ``max_changed`` paths, relative to the repository root; e.g. only an archive that
    ``archive.sh`` just wrote), or None outside git (or without git), so that a record says
    which code made it."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("-c", "core.quotepath=off", "status", "--porcelain", "--untracked-files=no")
    if status is None:
        return {"commit": commit.strip(), "dirty": None, "changed": []}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:max_changed]}


def run_record_base(run: Run) -> dict[str, Any]:
    """The fields every ``run.json`` starts with (status ``failed`` until the run succeeds)."""
    return {
        "run_id": run.run_id,
        "notebook": run.notebook_label or str(run.notebook),
        "notebook_path": str(run.notebook),
        "status": "failed",
        "parameters": jsonable(run.parameters),
        "grid": jsonable(run.grid),
    }


def execute_run(
    run: Run,
    output_dir: str | Path,
    *,
    kernel_name: str | None = None,
    force: bool = False,
) -> RunOutcome:
    """Execute one run with papermill (unless already complete) and write its run.json.

    Exceptions from the notebook or the kernel are recorded, not raised; KeyboardInterrupt is.
    """
    import papermill

    _recover_swap(run, output_dir)
    if not force and is_complete(run, output_dir):
        return RunOutcome(run, "skipped")
    final_dir = run.run_dir(output_dir).resolve()
    # a forced rerun of a finished run is written beside it and swapped in when it succeeds,
    # so an interrupted or failed rerun keeps the earlier result
    swap = force and is_complete(run, output_dir)
    run_dir = _staging_dir(run, output_dir) if swap else final_dir
    if swap and run_dir.exists():
        shutil.rmtree(run_dir)  # left by an earlier interrupted rerun
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RUN_FILE, RESULTS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    kernel, language = _kernel_and_language(run.notebook, kernel_name)
    output_notebook = run_dir / f"{run.notebook.stem}.ipynb"
    record: dict[str, Any] = {
        **run_record_base(run),
        "kernel": kernel,
        "cwd": str(run.notebook.parent),
        "output_notebook": output_notebook.name,
        "papermill_version": papermill.__version__,
        "source": source_state(run.notebook.parent),
        "started": timestamp(),
    }
    error: dict[str, Any] | None = None
    engine_kwargs: dict[str, Any] = {}
    if kernel == CURRENT_ENV_KERNEL:
        engine_kwargs["kernel_manager_class"] = CurrentEnvKernelManager
        record["python"] = sys.executable
        record["versions"] = environment_versions()  # the kernel runs in this interpreter
    else:
        record["versions_note"] = f"kernel {kernel!r} runs in its own environment, not recorded"
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(run.notebook),
            str(output_notebook),
            parameters={**run.parameters, "output_dir": str(run_dir)},
            cwd=str(run.notebook.parent),
            kernel_name=kernel,
            language=language,
            progress_bar=False,
            **engine_kwargs,
        )
        _check_results(run_dir / RESULTS_FILE)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the batch goes on
        error = error_record(exc)
    seconds = time.perf_counter() - t0
    record.update(
        status="ok" if error is None else "failed",
        finished=timestamp(),
        seconds=round(seconds, 3),
        error=error,
    )
    write_json(run_dir / RUN_FILE, record)
    message = None if error is None else f"{error['type']}: {error['message']}"
    if swap:
        if error is None:
            _swap_in(run_dir, final_dir, _staging_dir(run, output_dir, OLD_SUFFIX))
        else:
            message = f"{message} (the earlier result in {final_dir} is kept; this attempt is in {run_dir})"
    return RunOutcome(run, record["status"], seconds, message)


def _staging_dir(run: Run, output_dir: str | Path, suffix: str = NEW_SUFFIX) -> Path:
    """Where a forced rerun of ``run`` is written (``suffix`` NEW_SUFFIX) or the run it replaces
    waits while the two are swapped (OLD_SUFFIX): under ``<output_dir>/.castlib-staging/``,
    which `aggregate` skips."""
    return (Path(output_dir) / STAGING_DIR / (run.run_id + suffix)).resolve()


def _swap_in(new: Path, final: Path, old: Path) -> None:
    """Replace ``final`` by ``new``: ``final`` -> ``old``, ``new`` -> ``final``, drop ``old``.
    An interruption between the two renames is repaired by `_recover_swap`."""
    if old.exists():
        shutil.rmtree(old)
    old.parent.mkdir(parents=True, exist_ok=True)
    final.rename(old)
    new.rename(final)
    shutil.rmtree(old)


def _recover_swap(run: Run, output_dir: str | Path) -> None:
    """Finish or undo a swap cut between its renames: the run's folder is missing but its
    previous version waits in the staging area."""
    final = run.run_dir(output_dir).resolve()
    old = _staging_dir(run, output_dir, OLD_SUFFIX)
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old)
        return
    new = _staging_dir(run, output_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    if _complete_in(run, new):
        new.rename(final)  # the rerun had finished: complete the swap
        shutil.rmtree(old)
    else:
        old.rename(final)


@contextlib.contextmanager
def store_for_kernels(folder: Path, fit_store: Path | None = None) -> Iterator[None]:
    """Point the kernels started inside at one on-disk activation store, and at ``fit_store``
    when given (each unless the user set the variable already: ``$CASTLIB_ACTIVATION_STORE``,
    ``$CASTLIB_FIT_STORE``); the variables are restored on exit."""
    wanted = {STORE_ENV: folder}
    if fit_store is not None:
        wanted[FIT_STORE_ENV] = fit_store
    ours = [name for name in wanted if os.environ.get(name) is None]
    for name in ours:
        os.environ[name] = str(wanted[name].resolve())
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


def run_batch(
    config: RunConfig | str | Path,
    *,
    only: str | Sequence[str] | None = None,
    force: bool = False,
    kernel_name: str | None = None,
    progress: bool = True,
) -> list[RunOutcome]:
    """Execute the config's runs in order (resuming), with a tqdm bar; returns one outcome each.
    Before anything runs, `castlib.repro.runs.preflight.preflight` checks that this machine can
    run every unit left to run (device, dtype, memory; `ConfigError` otherwise).

    Args:
        config: a RunConfig or the path of a YAML config.
        only: keep runs whose id contains this substring (or any of these substrings).
        force: rerun runs that are already complete.
        kernel_name: overrides the config's and the notebooks' kernel.
        progress: show the progress bar and one line per run.
    """
    from tqdm.auto import tqdm

    cfg = runnable_config(config)
    kernel = kernel_name or cfg.kernel
    runs = select_runs(cfg.runs, only)
    preflight([r for r in runs if force or not is_complete(r, cfg.output_dir)])
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with (
        store_for_kernels(cfg.output_dir / STORE_FOLDER, cfg.fit_store),
        tqdm(runs, desc="runs", unit="run", disable=not progress) as bar,
    ):
        for run in bar:
            bar.set_postfix_str(run.run_id, refresh=True)
            outcome = execute_run(run, cfg.output_dir, kernel_name=kernel, force=force)
            outcomes.append(outcome)
            if progress:
                if outcome.status == "failed":
                    tqdm.write(f"[FAILED] {run.run_id}: {outcome.error}", file=sys.stderr)
                elif outcome.status == "ok":
                    tqdm.write(f"[ok] {run.run_id} ({outcome.seconds:.1f}s)", file=sys.stderr)
    return outcomes
