"""Tasks in the normalised format of ``shared/data/FORMAT.md``.

A task folder holds ``meta.json``, ``train.jsonl``, ``test.jsonl`` and optionally
``dev.jsonl``. `load_task` reads one into a `Task`: its instruction, label space (label words,
or option letters for multiple choice) and splits of `Example` rows. Every example's gold answer
is stored as an index into the label space.

The data directory is the ``data_dir`` argument, else ``$CASTLIB_DATA``, else ``./data``, else
``../shared/data`` (relative to the working directory), else ``shared/data`` next to the
repository root of this package.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Example",
    "Task",
    "load_task",
    "list_tasks",
    "resolve_data_dir",
    "sample_examples",
    "TaskFormatError",
]

SPLITS = ("train", "dev", "test")
KINDS = ("classification", "multiple_choice")


class TaskFormatError(ValueError):
    """A task file does not follow the normalised format."""


@dataclass(frozen=True)
class Example:
    """One row of a task.

    Attributes:
        id: the row id.
        fields: the input text fields (``text``, ``passage``, ``question``).
        label: index of the gold answer in the task's label space.
        options: the answer options of a multiple-choice row (None for classification).
        paper_subset: the row is one of the evaluation items of Chatterjee et al. 2024
            (FORMAT.md ``row.paper_subset``).
    """

    id: str
    fields: Mapping[str, str]
    label: int
    options: tuple[str, ...] | None = None
    paper_subset: bool = False


@dataclass
class Task:
    """A task: instruction, label space and splits.

    ``labels`` are the answers the model is scored on: label words for classification, option
    letters for multiple choice (a row with fewer options uses the first ``len(options)``).
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    instruction: str
    fields: tuple[str, ...]
    splits: Mapping[str, Sequence[Example]]
    language: str = "en"
    title: str = ""
    field_roles: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TaskFormatError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if len(self.labels) < 2:
            raise TaskFormatError(f"task {self.name}: needs at least two labels")
        if len(set(self.labels)) != len(self.labels):
            raise TaskFormatError(f"task {self.name}: duplicate labels {self.labels}")

    def split(self, name: str) -> Sequence[Example]:
        """The examples of split ``name`` (``train``, ``dev`` or ``test``)."""
        if name not in self.splits:
            raise KeyError(f"task {self.name} has no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    @property
    def train(self) -> Sequence[Example]:
        return self.split("train")

    @property
    def test(self) -> Sequence[Example]:
        return self.split("test")

    def answer(self, example: Example, index: int | None = None) -> str:
        """The answer string of ``example`` (its gold one, or the one at ``index``)."""
        return self.labels[example.label if index is None else index]

    def label_space(self, example: Example) -> tuple[str, ...]:
        """The answers ``example`` is scored over."""
        if self.kind == "multiple_choice" and example.options is not None:
            return self.labels[: len(example.options)]
        return self.labels

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.splits.items()} if isinstance(self.splits, dict) else {}
        return f"Task({self.name!r}, {self.kind}, labels={list(self.labels)}, splits={sizes})"


def sample_examples(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A seeded uniform sample of ``n`` of ``examples`` (without replacement, in sampled order).

    Split files may be ordered (financial_phrasebank's test file is sorted by label), so the
    first ``n`` rows can be a badly skewed subset; this draws ``random.Random(seed).sample``.
    ``n=None`` or ``n >= len(examples)`` keeps them all, in file order.
    """
    rows = list(examples)
    if n is None:
        return rows
    if n < 1:
        raise ValueError(f"sample size must be >= 1 or None, got {n}")
    if n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


def _candidate_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    out = []
    env = os.environ.get("CASTLIB_DATA")
    if env:
        out.append(Path(env).expanduser())
    out += [Path("data"), Path("..") / "shared" / "data", here.parent / "shared" / "data"]
    return out


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """Resolve the data directory (see the module docstring for the search order)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"data directory {p} does not exist")
        return p
    tried = _candidate_dirs()
    for p in tried:
        if p.is_dir() and any(p.glob("*/meta.json")):
            return p
    raise FileNotFoundError(
        "no task data directory found; tried "
        + ", ".join(str(p) for p in tried)
        + ". Pass data_dir=, set CASTLIB_DATA, or run `castlib data fetch --data-dir data`."
    )


def list_tasks(data_dir: str | Path | None = None) -> list[str]:
    """Names of the tasks available in the data directory."""
    root = resolve_data_dir(data_dir)
    return sorted(p.parent.name for p in root.glob("*/meta.json"))


def _parse_row(obj: Any, meta: Mapping[str, Any], where: str) -> Example:
    if not isinstance(obj, dict):
        raise TaskFormatError(f"{where}: row is not a JSON object")
    if "id" not in obj or "label" not in obj:
        raise TaskFormatError(f"{where}: row lacks 'id' or 'label'")
    labels = list(meta["labels"])
    fields = {}
    for name in meta["fields"]:
        value = obj.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TaskFormatError(f"{where}: field {name!r} missing or empty")
        fields[name] = value
    paper_subset = obj.get("paper_subset", False)
    if not isinstance(paper_subset, bool):
        raise TaskFormatError(f"{where}: paper_subset must be true or false, got {paper_subset!r}")
    if meta["kind"] == "classification":
        if obj["label"] not in labels:
            raise TaskFormatError(f"{where}: label {obj['label']!r} not in {labels}")
        return Example(
            id=str(obj["id"]),
            fields=fields,
            label=labels.index(obj["label"]),
            paper_subset=paper_subset,
        )
    options = obj.get("options")
    if not isinstance(options, list) or len(options) < 2:
        raise TaskFormatError(f"{where}: multiple-choice row needs a list of >= 2 options")
    if len(options) > len(labels):
        raise TaskFormatError(f"{where}: {len(options)} options but only {len(labels)} letters")
    if not all(isinstance(o, str) for o in options):
        raise TaskFormatError(f"{where}: options must be strings")
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(options):
        raise TaskFormatError(f"{where}: label {label!r} is not an index into the options")
    return Example(
        id=str(obj["id"]),
        fields=fields,
        label=label,
        options=tuple(options),
        paper_subset=paper_subset,
    )


def read_jsonl(path: Path, meta: Mapping[str, Any]) -> list[Example]:
    """Parse one split file; a malformed row raises naming the file and line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskFormatError(f"{where}: invalid JSON ({err.msg})") from err
            rows.append(_parse_row(obj, meta, where))
    return rows


def load_task(name: str, data_dir: str | Path | None = None) -> Task:
    """Load task ``name`` from the data directory.

    Raises:
        KeyError: unknown task (the message lists the available ones).
        TaskFormatError: malformed meta.json or row (names file and line).
    """
    root = resolve_data_dir(data_dir)
    folder = root / name
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        available = sorted(p.parent.name for p in root.glob("*/meta.json"))
        raise KeyError(f"unknown task {name!r} in {root}; available: {', '.join(available)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TaskFormatError(f"{meta_path}: invalid JSON ({err.msg})") from err
    for key in ("kind", "labels", "instruction", "fields"):
        if key not in meta:
            raise TaskFormatError(f"{meta_path}: missing key {key!r}")
    splits = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if path.is_file():
            splits[split] = read_jsonl(path, meta)
    for split, rows in splits.items():
        seen: set[str] = set()
        for ex in rows:
            if ex.id in seen:
                raise TaskFormatError(f"{folder / f'{split}.jsonl'}: duplicate row id {ex.id!r}")
            seen.add(ex.id)
    if "test" not in splits:
        raise TaskFormatError(f"{folder}: no test.jsonl")
    splits.setdefault("train", [])
    return Task(
        name=meta.get("name", name),
        kind=meta["kind"],
        labels=tuple(meta["labels"]),
        instruction=meta["instruction"],
        fields=tuple(meta["fields"]),
        splits=splits,
        language=meta.get("language", "en"),
        title=meta.get("title", name),
        field_roles=dict(meta.get("field_roles", {})),
        meta=meta,
    )
