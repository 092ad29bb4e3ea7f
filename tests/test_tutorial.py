"""The teaching path `notebooks/tutorial/`: each notebook exists as an exercise version
(``notebooks/tutorial/NN_name``, placeholders, committed unexecuted) and a solutions version
(``notebooks/tutorial/solutions/NN_name``, executed, kept under nbval), each a jupytext pair.

The two versions hold the same cells except those tagged ``exercise`` (and the relative links
of Markdown cells, re-based from one folder to the other); every exercise cell is followed by a
check cell (it calls the student's code through `castlib.tutorial_checks`); nbval collects the
solutions and not the exercises (notebooks/tutorial/conftest.py).

`test_wrong_answers_are_caught` runs each exercise notebook with scripted wrong answers, each
followed by its check cell, then the solution: every wrong answer must fail its check with the
message that teaches the point, and the solution after it must pass in the same kernel (a
corrected second attempt, with whatever the wrong one left behind)."""

from __future__ import annotations

import ast
import importlib.util
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch

import castlib
from castlib.scoring import EvalResult
from castlib.testing import tiny_model
from castlib.tutorial_checks import (
    ExerciseError,
    accuracy_bounds,
    answered,
    attempt,
    clear_hooks,
)
from tests.test_notebook_scripts import KERNELSPEC, mismatch

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "notebooks" / "tutorial"
SOLUTIONS = TUTORIAL / "solutions"
FIGURE = TUTORIAL / "figures" / "cast_two_steps.png"
EXERCISES = sorted(TUTORIAL.glob("[0-9][0-9]_*.py"))
STEMS = [p.stem for p in EXERCISES]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def exercise_cells(nb: nbformat.NotebookNode) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if "exercise" in c.metadata.get("tags", [])]


def has_placeholder(source: str) -> bool:
    """Whether the code holds a ``...`` (Ellipsis) placeholder."""
    return any(
        isinstance(node, ast.Constant) and node.value is Ellipsis
        for node in ast.walk(ast.parse(source))
    )


def relative(target: str) -> bool:
    return not (re.match(r"^[a-z]+:", target) or target.startswith(("#", "/")))


def rebased(markdown: str) -> str:
    """``markdown`` of the exercise version as the solutions version must say it: every
    relative link re-based from notebooks/tutorial/ to notebooks/tutorial/solutions/."""

    def rebase(match: re.Match) -> str:
        target = match.group(1)
        if not relative(target):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        moved = posixpath.normpath(posixpath.join("tutorial", path))
        return f"]({posixpath.relpath(moved, 'tutorial/solutions')}{hash_}{anchor})"

    return LINK.sub(rebase, markdown)


def jupyter_anchor(heading: str) -> str:
    """The anchor Jupyter (and nbconvert's HTML) gives a Markdown heading: its text, spaces as
    hyphens."""
    return "-".join(heading.split())


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


def test_links_are_rebased_between_the_folders() -> None:
    source = (
        "[a](solutions/01_x.ipynb#H-1) [b](01_x.ipynb) ![c](figures/f.png) [d](https://x.org/a)"
    )
    assert rebased(source) == (
        "[a](01_x.ipynb#H-1) [b](../01_x.ipynb) ![c](../figures/f.png) [d](https://x.org/a)"
    )


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
            want = rebased(a.source) if a.cell_type == "markdown" else a.source
            assert (a.cell_type, want) == (b.cell_type, b.source), (
                f"{stem} cell {i} differs between the exercise and the solutions versions; only "
                "cells tagged 'exercise' may differ (and Markdown links, re-based by one folder)"
            )


@pytest.mark.parametrize("stem", STEMS)
def test_every_exercise_is_checked(stem: str) -> None:
    nb = jupytext.read(SOLUTIONS / f"{stem}.py")
    for i in exercise_cells(nb):
        check = next(c for c in nb.cells[i + 1 :] if c.cell_type == "code")
        assert re.search(r"\b(answered|attempt)\(", check.source) and "assert" in check.source, (
            f"{stem}: the code cell after exercise cell {i} does not check it"
        )


@pytest.mark.parametrize("stem", STEMS)
def test_every_exercise_is_scaffolded(stem: str) -> None:
    """Each exercise's Markdown gives a time estimate, at least one folded hint, and links to
    both versions of itself; every relative link resolves to a file, every anchor to a heading
    of the notebook it points into; the notebook shows the figure of CAST's two steps."""
    for folder in (TUTORIAL, SOLUTIONS):
        nb = jupytext.read(folder / f"{stem}.py")
        markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
        for i in exercise_cells(nb):
            text = next(c.source for c in reversed(nb.cells[:i]) if c.cell_type == "markdown")
            heading = next(line for line in text.splitlines() if line.startswith("## "))
            assert re.search(r"\*About \d+ minutes\.\*", text), f"{stem}: {heading}: no time"
            assert "<details><summary>Hint</summary>" in text, f"{stem}: {heading}: no hint"
            anchor = jupyter_anchor(heading[3:])
            solution_link = f"{'' if folder == SOLUTIONS else 'solutions/'}{stem}.ipynb#{anchor}"
            assert f"]({solution_link})" in text, f"{stem}: {heading}: no link to its solution"
        assert any("cast_two_steps.png" in text for text in markdown), f"{stem}: no figure"
        for target in LINK.findall("\n".join(markdown)):
            if not relative(target):
                continue
            path, _, anchor = target.partition("#")
            file = (folder / path).resolve()
            assert file.is_file(), f"{folder.name}/{stem}: the link {target} leads nowhere"
            if anchor:
                linked = jupytext.read(file.with_suffix(".py"))
                headings = [
                    jupyter_anchor(line.lstrip("#").strip())
                    for c in linked.cells
                    if c.cell_type == "markdown"
                    for line in c.source.splitlines()
                    if line.startswith("#")
                ]
                assert anchor in headings, f"{stem}: no heading for the anchor #{anchor}"


@pytest.mark.parametrize("stem", STEMS)
def test_narrative_numbers_are_computed(stem: str) -> None:
    """No measured number typed into the Markdown: results reach the text through code."""
    nb = jupytext.read(TUTORIAL / f"{stem}.py")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            typed = re.findall(r"(?<![\w.])-?\d+\.\d{2,}\b", cell.source)
            assert not typed, f"{stem}: typed numbers {typed} in\n{cell.source[:200]}"


def test_the_setup_is_out_of_the_first_cell() -> None:
    """The first code cell is the parameters; the plumbing follows under a Setup heading."""
    for script in EXERCISES:
        cells = jupytext.read(script).cells
        code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
        assert "parameters" in cells[code[0]].metadata.get("tags", []), script.name
        assert "warnings" not in cells[code[0]].source, script.name
        setup = cells[code[1]]
        assert cells[code[1] - 1].source.startswith("### Setup"), script.name
        assert "castlib.tutorial_checks" in setup.source, script.name


def test_the_figure_is_drawn_by_its_script() -> None:
    spec = importlib.util.spec_from_file_location("cast_two_steps", FIGURE.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    candidates, queries, picked = module.toy_selection()
    assert len(set(picked)) == len(picked) == 3
    fig = module.draw()
    assert [ax.get_title() for ax in fig.axes] == [
        "Step 1: select influential, diverse source samples",
        "Step 2: contrastive steering",
    ]
    assert FIGURE.is_file() and FIGURE.stat().st_size > 10_000


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
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "NaN" not in shown and not re.search(r"layer \d+\.0\b", shown + printed), stem


def test_a_placeholder_gives_a_friendly_error() -> None:
    assert answered(0.0, "1.1") == 0.0
    for placeholder in (None, ...):
        with pytest.raises(NotImplementedError, match=r"Exercise 1\.1 is not done yet"):
            answered(placeholder, "1.1")
    with pytest.raises(NotImplementedError, match=r"Exercise 3\.2 is not done yet"):
        attempt("3.2", lambda S: None, [], on="S = []")


def test_an_exception_names_the_input() -> None:
    def coverage(influence, S):
        return float(influence[:, S].max(dim=1).values.mean())

    assert attempt("3.2", coverage, torch.ones(2, 3), [1], on="S = [1]") == 1.0
    with pytest.raises(ExerciseError, match=r"Exercise 3\.2: your coverage raised \w+") as info:
        attempt("3.2", coverage, torch.ones(2, 3), [], on="S = []")
    assert "when called on S = []" in str(info.value)
    assert isinstance(info.value.__cause__, (IndexError, RuntimeError))


def test_clear_hooks_removes_what_an_earlier_attempt_left() -> None:
    lm = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits
    assert clear_hooks(lm) == 0
    lm.blocks[1].register_forward_hook(lambda m, a, o: None)
    lm.blocks[2].register_forward_pre_hook(lambda m, a: None)
    castlib.steer(lm, torch.ones(lm.hidden_size), alpha=5.0, layers=[0])
    assert lm.interventions
    assert clear_hooks(lm) == 3
    assert not lm.interventions
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in lm.blocks)
    assert not lm.base._forward_hooks and not lm.base._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, clean)
    assert clear_hooks(lm) == 0


def test_accuracy_bounds_widen_by_the_near_ties_only() -> None:
    def result(rows: list[tuple[list[float], bool]]) -> EvalResult:
        predictions = [{"log_probs": s, "correct": c} for s, c in rows]
        accuracy = sum(c for _, c in rows) / len(rows)
        return EvalResult("t", "dev", len(rows), accuracy, 0.0, 1.0, len(rows), 0.0, predictions)

    far = result([([-0.1, -2.0], True), ([-0.1, -3.0], False)])
    assert accuracy_bounds(far) == (0.5, 0.5)
    near = result([([-1.0, -1.00001], True), ([-1.0, -1.00002], False), ([-1.0, -5.0], True)])
    assert accuracy_bounds(near) == pytest.approx((1 / 3, 1.0))
    with pytest.raises(ValueError, match="no predictions"):
        accuracy_bounds(EvalResult("t", "dev", 0, 0.0, 0.0, 0.0, 0, 0.0, []))


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


# --- scripted wrong answers ---------------------------------------------------------------------

#: Small parameters for the scripted runs (set after each notebook's parameters cell).
TINY = {
    "01_residual_stream": 'tasks = ["sst2", "ag_news"]\nn_per_task = 3',
    "02_icl_vector": (
        "n_train = 6\nk = 2\nn_dev = 8\nn_test = 12\nlayer_grid = [6]\nalpha_grid = [0.0, 1.0, 8.0]"
    ),
    "03_select_and_transfer": (
        "n_candidates = 16\nn_queries = 6\nn_tune = 6\nn_test = 8\nm = 4\nk = 2\n"
        "layer_grid = [6]\nalpha_grid = [0.0, 1.0]"
    ),
}

RECORD_HEAD = """def record_block(lm, prompts, layer):
    batch = lm.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
    captured = {}

    def hook(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

"""

DEV_SWEEP = """rows = []
for layer in layer_grid:
    for alpha in alpha_grid:
        with castlib.steer(lm, vector, alpha=alpha, layers=[layer]):
            rows.append({"layer": layer, "alpha": alpha,
                         "accuracy": castlib.evaluate(lm, task, examples=SPLIT).accuracy})
dev_table = pd.DataFrame(rows)
best = dev_table.loc[dev_table["accuracy"].idxmax()]
best_layer, best_alpha = int(best["layer"]), float(best["alpha"])
"""

#: Per notebook and exercise (1-based), the wrong answers in order: (source, what its check
#: must say). An entry ``("error", pattern)`` expects the check cell to fail with a message
#: matching ``pattern``; ``("prints", pattern)`` in a list with it expects that output as well.
WRONG: dict[str, dict[int, list[tuple[str, list[tuple[str, str]]]]]] = {
    "01_residual_stream": {
        1: [
            (
                "def last_real_token(attention_mask):\n"
                "    return torch.full((attention_mask.shape[0],), attention_mask.shape[1] - 1)",
                [("error", r"Exercise 1\.1 \(right padding\): for the mask.*last real tokens")],
            ),
            (
                "def last_real_token(attention_mask):\n    return attention_mask.argmax(dim=2)",
                [
                    (
                        "error",
                        r"Exercise 1\.1: your last_real_token raised IndexError when called "
                        r"on the right padding mask \[\[1, 1, 1, 0, 0\]",
                    )
                ],
            ),
            (
                "def last_real_token(attention_mask):\n    return attention_mask.sum()",
                [("error", r"Exercise 1\.1 \(right padding\): return one index per row")],
            ),
        ],
        2: [
            (  # leaves its hook and raises: the next attempt's check removes the hook
                RECORD_HEAD + "    lm.blocks[layer].register_forward_hook(hook)\n"
                "    with torch.no_grad():\n        lm.model(**batch)\n"
                '    return captured["hidden"][:, -1, :, 0]',
                [
                    (
                        "error",
                        r"Exercise 1\.2: your record_block raised IndexError when called on "
                        r"the 4 sst2 prompts, layer=9",
                    )
                ],
            ),
            (  # a first attempt that never removes its hook
                RECORD_HEAD + "    lm.blocks[layer].register_forward_hook(hook)\n"
                "    with torch.no_grad():\n        lm.model(**batch)\n"
                "    rows = torch.arange(len(prompts))\n"
                '    return captured["hidden"][rows, last_real_token(batch["attention_mask"])]'
                ".float()",
                [
                    ("prints", r"removed 1 hook\(s\) that an earlier attempt left"),
                    (
                        "error",
                        r"Exercise 1\.2: your record_block left 1 hook\(s\) registered on the "
                        r"blocks \(this check has removed them, so your next attempt",
                    ),
                ],
            ),
            (
                RECORD_HEAD + "    handle = lm.blocks[layer].register_forward_hook(hook)\n"
                "    try:\n        with torch.no_grad():\n            lm.model(**batch)\n"
                "    finally:\n        handle.remove()\n"
                '    return captured["hidden"][:, -1].float()',
                [("error", r"Exercise 1\.2: your states differ from castlib's by")],
            ),
        ],
        3: [
            (
                "def task_similarity(acts, layer):\n"
                "    unit = {n: torch.nn.functional.normalize(a[:, layer], dim=1) "
                "for n, a in acts.items()}\n"
                "    return pd.DataFrame({a: {b: float((unit[a] @ unit[b].T).mean()) "
                "for b in unit} for a in unit})",
                [("error", r"Exercise 1\.3 \(layer 1\): expected.*Centre on the mean of \*all\*")],
            ),
            (
                "def task_similarity(acts, layer):\n    return acts[layer]",
                [
                    (
                        "error",
                        r"Exercise 1\.3: your task_similarity raised KeyError when called on "
                        r"acts, layer=1",
                    )
                ],
            ),
        ],
    },
    "02_icl_vector": {
        1: [
            (
                "def pick_demos(xs, k, rng):\n"
                "    return [[x] + rng.sample([e for e in xs if e.id != x.id], k - 1) for x in xs]",
                [("error", r"Exercise 2\.1: \S+ is among its own demonstrations")],
            ),
            (
                "def pick_demos(xs, k, rng):\n    return [rng.sample(dev, k) for x in xs]",
                [("error", r"Exercise 2\.1: the demonstrations of \S+ must come from xs")],
            ),
            (
                "def pick_demos(xs, k, rng):\n    return [rng.sample(xs, len(xs) + 1) for x in xs]",
                [
                    (
                        "error",
                        r"Exercise 2\.1: your pick_demos raised ValueError when called on the 6 "
                        r"examples xs, k=2",
                    )
                ],
            ),
        ],
        2: [
            (
                "h_zero = castlib.record_activations(lm, zero_prompts)\n"
                "h_few = castlib.record_activations(lm, few_prompts)\n"
                "deltas = h_zero - h_few\nv = deltas.mean(0)",
                [("error", r"Exercise 2\.2: deltas\[0\] is not h\(few-shot prompt 0\)")],
            ),
            (
                "h_zero = castlib.record_activations(lm, zero_prompts)\n"
                "h_few = castlib.record_activations(lm, few_prompts)\n"
                "deltas = h_few - h_zero\nv = deltas.sum(0)",
                [("error", r"Exercise 2\.2: v is the mean of deltas")],
            ),
        ],
        3: [
            (  # tuning on test
                DEV_SWEEP.replace("SPLIT", "test"),
                [
                    (
                        "error",
                        r"Exercise 2\.3: at layer 6, alpha [\d.]+ your table says [\d.]+, but the "
                        r"8 dev rows give [\d.]+ \(recomputed here\).*never on `test`",
                    )
                ],
            ),
            (  # the right table, and a steering context left open
                DEV_SWEEP.replace("SPLIT", "dev")
                + "castlib.steer(lm, vector, alpha=1.0, layers=[best_layer])",
                [("error", r"Exercise 2\.3: 1 steering intervention\(s\) or hook\(s\) were still")],
            ),
            (  # no alpha-0 baseline
                DEV_SWEEP.replace("SPLIT", "dev").replace(
                    "for alpha in alpha_grid", "for alpha in alpha_grid[1:]"
                ),
                [("error", r"Exercise 2\.3: one row per \(layer, alpha\) pair .*alpha 0\.0")],
            ),
            (  # the worst row chosen
                DEV_SWEEP.replace("SPLIT", "dev").replace("idxmax", "idxmin"),
                [("error", r"Exercise 2\.3: \(best_layer, best_alpha\) = .* the best row")],
            ),
        ],
        4: [
            (
                "def placebo_demos(demos, task, rng):\n    return [list(d) for d in demos]",
                [("error", r"Exercise 2\.4: in the demonstrations of \S+, .* kept their gold")],
            ),
            (
                "def placebo_demos(demos, task, rng):\n"
                "    return [[replace(e, label=1 - e.label) for e in reversed(d)] for d in demos]",
                [("error", r"Exercise 2\.4: the placebo demonstrations of \S+ must be the same")],
            ),
            (
                "def placebo_demos(demos, task, rng):\n"
                "    return [[replace(e, lable=1 - e.label) for e in d] for d in demos]",
                [
                    (
                        "error",
                        r"Exercise 2\.4: your placebo_demos raised TypeError when called on the "
                        r"demonstrations of exercise 2\.1",
                    )
                ],
            ),
        ],
    },
    "03_select_and_transfer": {
        1: [
            (
                "def embed(task, examples):\n"
                "    prompts = [castlib.zero_shot(task, x) for x in examples]\n"
                "    return castlib.record_activations(lm, prompts, layers=[embed_layer])[:, 0]",
                [("error", r"Exercise 3\.1: every row must have norm 1")],
            ),
            (
                "def embed(task, examples):\n"
                "    prompts = [castlib.zero_shot(task, x) for x in examples]\n"
                "    states = castlib.record_activations(lm, prompts, layers=[1])[:, 0]\n"
                "    return torch.nn.functional.normalize(states, dim=1)",
                [("error", r"Exercise 3\.1: row 0 is not the normalised zero-shot state")],
            ),
            (
                "def embed(task, examples):\n"
                "    prompts = [castlib.zero_shot(x, task) for x in examples]\n"
                "    return castlib.record_activations(lm, prompts)",
                [
                    (
                        "error",
                        r"Exercise 3\.1: your embed raised \w+ when called on the 16 sst2 "
                        r"candidates",
                    )
                ],
            ),
        ],
        2: [
            (
                "def coverage(influence, S):\n"
                "    return float(influence[:, list(S)].max(dim=1).values.mean())",
                [
                    (
                        "error",
                        r"Exercise 3\.2: your coverage raised \w+ when called on S = \[\]:",
                    )
                ],
            ),
            (
                "def coverage(influence, S):\n    if not S:\n        return 0.0\n"
                "    return float(influence[:, list(S)].max(dim=1).values.sum())",
                [("error", r"Exercise 3\.2: for S = \[0\] the coverage is")],
            ),
        ],
        3: [
            (
                "def max_pair_cosine(emb, S):\n"
                "    x = emb[list(S)]\n    return float((x @ x.T).max())",
                [("error", r"Exercise 3\.3: for S = \[0, 1\] .*cosine with itself")],
            ),
        ],
        4: [
            (
                "def demos_for(selected, k, rng):\n"
                "    return [[s] + rng.sample([e for e in selected if e.id != s.id], k - 1) "
                "for s in selected]",
                [("error", r"Exercise 3\.4: \S+ is among its own demonstrations")],
            ),
            (
                "def demos_for(selected, k, rng):\n"
                "    chosen = {s.id for s in selected}\n"
                "    others = [c for c in candidates if c.id not in chosen]\n"
                "    return [rng.sample(others, k) for s in selected]",
                [("error", r"Exercise 3\.4: the demonstrations of \S+ must be selected samples")],
            ),
        ],
    },
}


def scripted(stem: str) -> tuple[nbformat.NotebookNode, dict[int, list[tuple[str, str]]]]:
    """The exercise notebook with small parameters, each exercise cell replaced by its wrong
    answers (each followed by a copy of the check cell) and then its solution (followed by the
    notebook's own check cell); the expectations per code-cell index (an empty list: no error)."""
    exercise = jupytext.read(TUTORIAL / f"{stem}.py")
    solution = jupytext.read(SOLUTIONS / f"{stem}.py")
    cells: list[nbformat.NotebookNode] = []
    expect: dict[int, list[tuple[str, str]]] = {}
    number = 0
    for i, cell in enumerate(exercise.cells):
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code":
            continue
        if "exercise" in tags:
            number += 1
            check = next(c for c in exercise.cells[i + 1 :] if c.cell_type == "code")
            for source, wanted in WRONG[stem].get(number, []):
                cells.append(nbformat.v4.new_code_cell(source))
                cells.append(nbformat.v4.new_code_cell(check.source))
                expect[len(cells) - 1] = wanted
            cells.append(nbformat.v4.new_code_cell(solution.cells[i].source))
            continue
        cells.append(nbformat.v4.new_code_cell(cell.source))
        if "parameters" in tags:
            cells.append(nbformat.v4.new_code_cell(TINY[stem]))
    assert number == len(WRONG[stem]) or set(WRONG[stem]) <= set(range(1, number + 1))
    nb = nbformat.v4.new_notebook(cells=cells, metadata=exercise.metadata)
    return nb, expect


def run_here(nb: nbformat.NotebookNode, cwd: Path) -> None:
    """Execute ``nb`` in place, errors kept, in a kernel of this interpreter."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                resource_dir=ipykernel.kernelspec.RESOURCES,
                **ipykernel.kernelspec.get_kernel_dict(),
            )

    km = KernelManager(kernel_name="this", kernel_spec_manager=ThisInterpreter())
    NotebookClient(
        nb, km=km, allow_errors=True, timeout=900, resources={"metadata": {"path": str(cwd)}}
    ).execute()


@pytest.mark.real_model
@pytest.mark.parametrize("stem", STEMS)
def test_wrong_answers_are_caught(
    stem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    exercises = len(exercise_cells(jupytext.read(TUTORIAL / f"{stem}.py")))
    assert set(WRONG[stem]) == set(range(1, exercises + 1)), f"{stem}: an exercise untested"
    nb, expect = scripted(stem)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
    run_here(nb, TUTORIAL)
    nbformat.write(nb, tmp_path / f"{stem}.ipynb")  # to read when an assertion below fails
    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        wanted = expect.get(index, [])
        error_patterns = [p for kind, p in wanted if kind == "error"]
        if not error_patterns:
            assert not errors, (
                f"{stem} cell {index} failed:\n{cell.source}\n{errors[0].ename}: {errors[0].evalue}"
            )
        else:
            assert errors, f"{stem} cell {index}: the wrong answer before it was not caught"
            message = f"{errors[0].ename}: {errors[0].evalue}"
            for pattern in error_patterns:
                assert re.search(pattern, message, re.S), (
                    f"{stem} cell {index}: expected /{pattern}/, got\n{message}"
                )
        for kind, pattern in wanted:
            if kind == "prints":
                assert re.search(pattern, printed), f"{stem} cell {index}: /{pattern}/ not printed"
    printed = "".join(
        o.get("text", "") for c in nb.cells for o in c.outputs if o.output_type == "stream"
    )
    for n in range(1, exercises + 1):  # every solution passes after the wrong attempts
        assert f"Exercise {stem[1]}.{n}: correct" in printed, f"{stem}: exercise {n}"
