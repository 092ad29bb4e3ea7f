"""The notebooks' jupytext pairing: each ``notebooks/NN_name.py`` percent script and its
``NN_name.ipynb`` hold the same cells (types, sources, tags), so the notebook that papermill
runs and nbval checks is the script that ruff lints; and `castlib.repro.nbtools.setup`, their common
setup."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest

from castlib.repro import nbtools

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
SCRIPTS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
KERNELSPEC = {"name": "castlib", "display_name": "Python 3 (castlib)", "language": "python"}


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    """What the pairing must keep equal: each cell's type, source and tags (not outputs, ids,
    execution counts or other metadata)."""
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def mismatch(script: nbformat.NotebookNode, notebook: nbformat.NotebookNode) -> str | None:
    """The first difference between the cells of ``script`` and ``notebook``, or None."""
    a, b = cells(script), cells(notebook)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"cell {i} differs:\n  script:   {x!r}\n  notebook: {y!r}"
    if len(a) != len(b):
        return f"{len(a)} cells in the script, {len(b)} in the notebook"
    return None


def test_every_notebook_has_its_script() -> None:
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert len(SCRIPTS) == 8
    assert [p.stem for p in SCRIPTS] == [p.stem for p in notebooks]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_and_notebook_agree(script: Path) -> None:
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    problem = mismatch(jupytext.read(script), notebook)
    assert problem is None, (
        f"{script.name} and its .ipynb disagree ({problem}); after editing the script run "
        f"`jupytext --sync notebooks/{script.name}` and re-execute the notebook"
    )
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert dict(notebook.metadata["kernelspec"]) == KERNELSPEC
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{script.name}: {len(tagged)} cells tagged 'parameters'"


def test_a_disagreement_is_found() -> None:
    script = jupytext.read(SCRIPTS[0])
    notebook = nbformat.read(SCRIPTS[0].with_suffix(".ipynb"), as_version=4)
    assert mismatch(script, notebook) is None
    code = [c for c in notebook.cells if c.cell_type == "code"]
    edited = nbformat.from_dict(notebook)
    edited.cells[notebook.cells.index(code[-1])].source += "\nprint()"
    assert "differs" in mismatch(script, edited)
    retagged = nbformat.from_dict(notebook)
    retagged.cells[notebook.cells.index(code[-1])].metadata["tags"] = ["nbval-ignore-output"]
    assert "differs" in mismatch(script, retagged)
    longer = nbformat.from_dict(notebook)
    longer.cells.append(nbformat.v4.new_code_cell("print()"))
    assert "in the notebook" in mismatch(script, longer)


def test_setup_loads_the_model_and_makes_output_dir(tmp_path: Path, lm) -> None:
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    out_dir = tmp_path / "results" / "00_x"
    with pd.option_context("display.precision", 6, "display.width", 80):
        loaded, out = nbtools.setup(str(folder), device="cpu", output_dir=str(out_dir))
        assert pd.get_option("display.precision") == 3
        assert pd.get_option("display.width") == 120
    assert out == out_dir and out.is_dir()
    assert loaded.n_layers == lm.n_layers and loaded.device.type == "cpu"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_parameters_table_reads_the_notebooks_own_parameters_cell(script: Path) -> None:
    """Each notebook shows its parameters through `nbtools.notebook_parameters` on its own file
    (no hand-written list that could drift from the parameters cell)."""
    call = f'nbtools.notebook_parameters(globals(), "{script.stem}.ipynb")'
    assert script.read_text(encoding="utf-8").count(call) == 1, f"{script.name} lacks {call}"
    assert "params_table(\n    dict(" not in script.read_text(encoding="utf-8")
