"""The teaching path `notebooks/tutorial/`: each notebook exists as an exercise version
(``notebooks/tutorial/NN_name``, placeholders, committed unexecuted) and a solutions version
(``notebooks/tutorial/solutions/NN_name``, executed, kept under nbval), each a jupytext pair.

The two versions hold the same cells except those tagged ``exercise``; every exercise cell is
followed by a check cell (it calls ``answered``, which turns a placeholder into a friendly
error); nbval collects the solutions and not the exercises (notebooks/tutorial/conftest.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from tests.test_notebook_scripts import KERNELSPEC, mismatch

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "notebooks" / "tutorial"
SOLUTIONS = TUTORIAL / "solutions"
EXERCISES = sorted(TUTORIAL.glob("[0-9][0-9]_*.py"))
STEMS = [p.stem for p in EXERCISES]


def exercise_cells(nb: nbformat.NotebookNode) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if "exercise" in c.metadata.get("tags", [])]


def has_placeholder(source: str) -> bool:
    """Whether the code holds a ``...`` (Ellipsis) placeholder."""
    return any(
        isinstance(node, ast.Constant) and node.value is Ellipsis
        for node in ast.walk(ast.parse(source))
    )


def test_three_notebooks_in_both_versions() -> None:
    assert STEMS == ["01_residual_stream", "02_icl_vector", "03_select_and_transfer"]
    assert [p.stem for p in sorted(SOLUTIONS.glob("[0-9][0-9]_*.py"))] == STEMS
    for folder in (TUTORIAL, SOLUTIONS):
        assert sorted(p.stem for p in folder.glob("*.ipynb")) == STEMS, folder


@pytest.mark.parametrize(
    "script",
    [*EXERCISES, *(SOLUTIONS / p.name for p in EXERCISES)],
    ids=lambda p: str(p.relative_to(TUTORIAL)),
)
def test_script_and_notebook_agree(script: Path) -> None:
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    problem = mismatch(jupytext.read(script), notebook)
    assert problem is None, (
        f"{script.name} and its .ipynb disagree ({problem}); after editing the script run "
        f"`jupytext --sync {script.relative_to(REPO)}`"
    )
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert dict(notebook.metadata["kernelspec"]) == KERNELSPEC


@pytest.mark.parametrize("stem", STEMS)
def test_versions_differ_only_in_exercise_cells(stem: str) -> None:
    exercise = jupytext.read(TUTORIAL / f"{stem}.py")
    solution = jupytext.read(SOLUTIONS / f"{stem}.py")
    assert len(exercise.cells) == len(solution.cells)
    marked = exercise_cells(solution)
    assert len(marked) >= 3, f"{stem}: {len(marked)} exercises"
    assert exercise_cells(exercise) == marked
    for i, (a, b) in enumerate(zip(exercise.cells, solution.cells, strict=True)):
        if i in marked:
            assert has_placeholder(a.source), f"{stem} cell {i}: the exercise has no `...`"
            assert not has_placeholder(b.source), f"{stem} cell {i}: the solution has a `...`"
        else:
            assert (a.cell_type, a.source) == (b.cell_type, b.source), (
                f"{stem} cell {i} differs between the exercise and the solution versions; "
                "only cells tagged 'exercise' may differ"
            )


@pytest.mark.parametrize("stem", STEMS)
def test_every_exercise_is_checked(stem: str) -> None:
    nb = jupytext.read(SOLUTIONS / f"{stem}.py")
    for i in exercise_cells(nb):
        check = next(c for c in nb.cells[i + 1 :] if c.cell_type == "code")
        assert "answered(" in check.source and "assert" in check.source, (
            f"{stem}: the code cell after exercise cell {i} does not check it"
        )


@pytest.mark.parametrize("stem", STEMS)
def test_exercises_are_unexecuted_and_solutions_executed(stem: str) -> None:
    exercise = nbformat.read(TUTORIAL / f"{stem}.ipynb", as_version=4)
    solution = nbformat.read(SOLUTIONS / f"{stem}.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in exercise.cells if c.cell_type == "code")
    outputs = [o for c in solution.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for n in range(1, len(exercise_cells(solution)) + 1):
        assert f"Exercise {stem[1]}.{n}: correct" in printed, f"{stem}: exercise {n} not passed"


def test_a_placeholder_gives_a_friendly_error() -> None:
    """The notebooks' ``answered`` helper (compiled from the notebook itself)."""
    source = next(c.source for c in jupytext.read(EXERCISES[0]).cells if "def answered" in c.source)
    tree = ast.parse(source)
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "answered")
    namespace: dict = {}
    exec(compile(ast.Module(body=[helper], type_ignores=[]), "answered", "exec"), namespace)
    answered = namespace["answered"]
    assert answered(0.0, "1.1") == 0.0
    for placeholder in (None, ...):
        with pytest.raises(NotImplementedError, match=r"Exercise 1\.1 is not done yet"):
            answered(placeholder, "1.1")


def test_nbval_collects_the_solutions_only() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "notebooks/tutorial",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert collected == {f"notebooks/tutorial/solutions/{s}.ipynb" for s in STEMS}, out.stdout
