"""Fetch CAST tasks from the Hugging Face hub into castlib's normalised task format.

The package is split by purpose: `spec` (what a task is, the spec file, row validation),
`converters` (hub row -> castlib row), `registry` (tasks by name, language families) and
`download` (hub access, row selection, writing, the command line); the names below are
re-exported here.

The format is the one described in ``data/FORMAT.md``: one folder per task holding
``meta.json``, ``train.jsonl``, ``test.jsonl`` and optionally ``dev.jsonl``.  This module is for
users with internet access who want to rebuild (or extend) the task folders themselves; it needs
the optional extra ``castlib[fetch]`` (the ``datasets`` library), imported lazily.

Design
------
* Every task is a small :class:`TaskSpec`, written as data in ``fetch_specs.yaml`` (package
  data in this folder, read by :func:`spec_from_doc`): the hub dataset id, config and
  split names, a *pure* ``convert_row(row) -> row`` function (named in the file, defined in
  `converters`; testable on in-memory rows), the label space, the instruction, the input field
  names, language, licence and citation.  Instructions and label
  words are the ones the shipped ``data/<task>/meta.json`` files use, so fetched folders
  are drop-in replacements.
* Families take a language code: ``sib200_<lang>`` (e.g. ``sib200_swh`` or ``sib200_swh_Latn``)
  and ``nusax_senti_<lang>``.
* Subsampling is deterministic: each hub split is visited in a ``random.Random(seed)`` shuffled
  order and rows are taken until the cap is reached; the kept rows are written in their original
  hub order.  When two of our splits come from one hub split (e.g. financial_phrasebank has a
  single split), test is filled first, then dev, then train, so they are disjoint.
* Fetched rows are checked by the loader's own validator (:func:`castlib.tasks.parse_row`,
  through :func:`validate_row`), so a fetched folder loads.
* Rows whose conversion fails, whose label is outside the label space, that a task filters on
  purpose (e.g. ARC items without 4 options) or that repeat an already kept input are skipped and
  counted in ``meta.notes``; nothing is silently rewritten.
* ``meta.json`` is written last, atomically (tmp file + rename): a folder without ``meta.json`` is
  a partial fetch.

CLI (dispatched by ``castlib data fetch``)::

    castlib data fetch [TASK ...] --data-dir DIR [--max-train N] [--max-test N] [--overwrite]
"""

from __future__ import annotations

from .converters import CONVERTERS, RACE_MAX_PASSAGE_CHARS, sciq_answer_position
from .download import build_meta, fetch_task, fetch_tasks, main, select_rows
from .registry import (
    DEFAULT_TASKS,
    FAMILIES,
    REGISTRY,
    known_tasks,
    nusax_spec,
    resolve_task,
    sib200_spec,
    spec_from_doc,
)
from .spec import (
    LABEL_SETS,
    PARQUET_REVISION,
    ConversionError,
    LabelError,
    SkipRow,
    TaskSpec,
    validate_row,
)

__all__ = [
    "CONVERTERS",
    "DEFAULT_TASKS",
    "FAMILIES",
    "LABEL_SETS",
    "PARQUET_REVISION",
    "RACE_MAX_PASSAGE_CHARS",
    "REGISTRY",
    "ConversionError",
    "LabelError",
    "SkipRow",
    "TaskSpec",
    "build_meta",
    "fetch_task",
    "fetch_tasks",
    "known_tasks",
    "main",
    "nusax_spec",
    "resolve_task",
    "sciq_answer_position",
    "select_rows",
    "sib200_spec",
    "spec_from_doc",
    "validate_row",
]
