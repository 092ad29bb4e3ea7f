"""The locked environment: requirements.lock.txt, the versions every run records, and the archived
records checked against the lock (castlib.repro.versions).

An archived run.json whose library versions differ from the lock's fails here unless it carries a
``versions_note`` saying why; one without versions must say why too. A batch run records the
versions of the interpreter that ran it.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import nbformat
import pytest

from castlib.repro import runs as R
from castlib.repro import versions as V

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / V.LOCK_FILE
ARCHIVE = ROOT / "papermill_runs" / "results"
RUN_FILES = sorted(ARCHIVE.glob("*/**/run.json"))


@pytest.fixture(scope="module")
def lock() -> list[tuple[str, str, str | None]]:
    return V.read_lock(LOCK)


def _makefile_pins() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = re.search(r"^ARCHIVE_PINS := (.+)$", text, re.M)
    assert line, "the Makefile names no ARCHIVE_PINS"
    return dict(pin.split("==") for pin in line.group(1).split())


def test_lock_pins_every_dependency_exactly(lock) -> None:
    names = {name for name, _, _ in lock}
    # the core, the extras make setup installs, and the lock tool itself
    for name in ("torch", "transformers", "numpy", "pandas", "papermill", "mkdocs", "peft", "uv"):
        assert name in names, f"{name} is not in {V.LOCK_FILE}; run make lock"
    for name in ("steering-vectors", "repeng"):  # the peers live in benchmarks/.venv-bench
        assert name not in names


def test_lock_keeps_the_archive_versions(lock) -> None:
    """The versions the archive was made with (the Makefile's ARCHIVE_PINS, which `make lock`
    passes to uv as constraints) are the lock's, on every Python and platform."""
    pins = _makefile_pins()
    assert pins == {"torch": "2.13.0", "transformers": "5.24.0"}
    for name, version in pins.items():
        assert {v for n, v, _ in lock if n == name} == {version}, name


def test_read_lock_refuses_what_is_not_a_pin(tmp_path: Path) -> None:
    good = tmp_path / "ok.txt"
    good.write_text("# head\nNumPy==2.4.6 ; python_full_version < '3.12'\n    # via x\na_b.c==1\n")
    assert V.read_lock(good) == [
        ("numpy", "2.4.6", "python_full_version < '3.12'"),
        ("a-b-c", "1", None),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy>=2\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: not an exact pin"):
        V.read_lock(bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no pin"):
        V.read_lock(tmp_path / "empty.txt")


def test_locked_versions_follow_the_markers() -> None:
    lock = [
        ("numpy", "2.4.6", "python_full_version < '3.12'"),
        ("numpy", "2.5.5", "python_full_version >= '3.12'"),
        ("nvidia-nccl", "2.29.7", "sys_platform == 'linux'"),
        ("torch", "2.13.0", None),
    ]
    linux311 = {"python": "3.11.7", "sys_platform": "linux", "platform_machine": "x86_64"}
    assert V.locked_versions(lock, linux311) == {
        "numpy": "2.4.6",
        "nvidia-nccl": "2.29.7",
        "torch": "2.13.0",
    }
    mac312 = {"python": "3.12.1", "sys_platform": "darwin", "platform_machine": "arm64"}
    assert V.locked_versions(lock, mac312) == {"numpy": "2.5.5", "torch": "2.13.0"}


def test_record_problem_needs_a_note_for_other_versions() -> None:
    lock = [("torch", "2.13.0", None), ("transformers", "5.24.0", None)]
    same = {"python": "3.11.7", "packages": {"torch": "2.13.0+cpu", "Transformers": "5.24.0"}}
    assert V.record_problem({"versions": same}, lock) is None  # +cpu is torch==2.13.0
    other = {"python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "5.25.0"}}
    problem = V.record_problem({"versions": other}, lock)
    assert (
        problem
        == "ran with transformers 5.25.0 (lock: 5.24.0) and has no 'versions_note' saying why"
    )
    assert V.record_problem({"versions": other, "versions_note": "a rerun on 5.25"}, lock) is None
    assert "no 'versions'" in V.record_problem({"status": "ok"}, lock)
    assert V.record_problem({"versions_note": "made before runs recorded versions"}, lock) is None
    assert "is not" in V.record_problem({"versions": {"torch": "2.13.0"}}, lock)
    # a package the lock does not pin is not compared
    extra = {"python": "3.11.7", "packages": {"torch": "2.13.0", "my-tool": "9"}}
    assert V.record_problem({"versions": extra}, lock) is None


def test_environment_versions_are_this_interpreter(lock) -> None:
    import platform

    import torch
    import transformers

    env = V.environment_versions()
    assert env["python"] == platform.python_version()
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["transformers"] == transformers.__version__
    assert env["packages"]["castlib"]


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda p: str(p.relative_to(ARCHIVE)))
def test_archived_record_versions_match_the_lock_or_say_why(run_file: Path, lock) -> None:
    record = json.loads(run_file.read_text(encoding="utf-8"))
    problem = V.record_problem(record, lock)
    assert problem is None, f"{run_file.relative_to(ROOT)}: {problem}"


def test_a_batch_run_records_its_versions(tmp_path: Path) -> None:
    """run.json of a batch run holds the versions of the interpreter that ran the notebook."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("output_dir = 'results'")
    params.metadata["tags"] = ["parameters"]
    body = textwrap.dedent(
        """
        import json, pathlib, transformers
        out = pathlib.Path(output_dir); out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([{"transformers": transformers.__version__}]))
        """
    )
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    config = R.parse_config(
        {"output_dir": str(tmp_path / "out"), "runs": [{"notebook": str(path)}]}
    )
    (outcome,) = R.run_batch(config, progress=False)
    assert outcome.status == "ok", outcome.error
    run = json.loads((outcome.run.run_dir(config.output_dir) / R.RUN_FILE).read_text())
    ran = json.loads((outcome.run.run_dir(config.output_dir) / R.RESULTS_FILE).read_text())
    assert run["versions"] == V.environment_versions()
    assert run["versions"]["packages"]["transformers"] == ran[0]["transformers"]
