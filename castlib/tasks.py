"""Tasks in the normalised format of ``data/FORMAT.md``.

A task folder holds ``meta.json``, ``train.jsonl``, ``test.jsonl`` and optionally
``dev.jsonl``; each split file may instead be gzip-compressed (``train.jsonl.gz``), as the
repository's own ``data/`` folder ships them. `load_task` reads one into a `Task`: its
instruction, label space (label words, or option letters for multiple choice) and splits of
`Example` rows. Every example's gold answer is stored as an index into the label space.

The data directory is the ``data_dir`` argument, else ``$CASTLIB_DATA``, else the ``data/``
folder of the repository this package was installed from (found relative to the package, not
the working directory, so notebooks and scripts find it from anywhere), else an error that
names what was tried. ``castlib data fetch`` writes the same format from the Hugging Face hub.

A split file is read whole first: a truncated gzip file, a malformed row, a repeated row id, a
row count that disagrees with ``meta.json``'s ``counts``, or a ``meta.json`` ``name`` other than
the folder's (a task is identified by both) raises `TaskFormatError` naming the file."""

from __future__ import annotations

import difflib
import gzip
import json
import os
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validate import check_optional_positive_int

__all__ = [
    "Example",
    "Task",
    "load_task",
    "list_tasks",
    "resolve_data_dir",
    "sample_examples",
    "TaskFormatError",
    "RowLabelError",
    "parse_row",
]

SPLITS = ("train", "dev", "test")
KINDS = ("classification", "multiple_choice")


class TaskFormatError(ValueError):
    """A task file does not follow the normalised format."""


class RowLabelError(TaskFormatError):
    """A row's label is outside its task's label space."""


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
        if len({label.strip() for label in self.labels}) != len(self.labels):
            raise TaskFormatError(
                f"task {self.name}: labels {list(self.labels)} repeat a label (up to surrounding "
                f"whitespace, which scoring ignores: ' positive' is 'positive'); make them distinct"
            )

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
    n = check_optional_positive_int(n, "sample size")  # None, or an int >= 1 (not True, "16")
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


#: The environment variable that names a data directory.
DATA_ENV = "CASTLIB_DATA"


def repo_data_dir() -> Path:
    """The ``data/`` folder of the repository holding this package (it may not exist, e.g.
    for a wheel installed without the repository)."""
    return Path(__file__).resolve().parent.parent / "data"


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """The data directory: ``path``, else ``$CASTLIB_DATA``, else `repo_data_dir`.

    An explicit ``path`` or ``$CASTLIB_DATA`` that is not a directory is an error (never a
    silent fall-back to another folder).

    Raises:
        FileNotFoundError: naming every place tried and how to get the data.
    """
    given = [(path, "data_dir="), (os.environ.get(DATA_ENV) or None, f"${DATA_ENV}")]
    for value, what in given:
        if value is None:
            continue
        p = Path(value).expanduser()
        if not p.is_dir():
            state = "is a file, not a folder" if p.exists() else "does not exist"
            raise FileNotFoundError(
                f"data directory {p} ({what}) {state}; it must be a folder of task folders "
                f"(<task>/meta.json)"
            )
        return p
    own = repo_data_dir()
    if own.is_dir() and any(own.glob("*/meta.json")):
        return own
    raise FileNotFoundError(
        f"no task data directory found; tried data_dir= (not given), ${DATA_ENV} (not set) and "
        f"the repository's {own} (no task folders). Clone the repository (it ships data/), "
        f"pass data_dir=, set {DATA_ENV}, or run `castlib data fetch TASK ... --data-dir DIR`."
    )


def list_tasks(data_dir: str | Path | None = None) -> list[str]:
    """Names of the tasks available in the data directory."""
    root = resolve_data_dir(data_dir)
    return sorted(p.parent.name for p in root.glob("*/meta.json"))


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_row(obj: Any, meta: Mapping[str, Any], where: str = "row") -> Example:
    """The `Example` of one jsonl row of a task with this ``meta``; the one validator of the row
    format (FORMAT.md), used by the loader and by `castlib data fetch` (its `validate_row`).

    A row is a JSON object with a non-empty string ``id``; every ``meta["fields"]`` entry a
    non-empty string; ``paper_subset``, when present, a bool; classification: ``label`` one of
    ``meta["labels"]``; multiple choice: ``options`` a list of 2..len(labels) non-empty strings
    (one per option letter, in order) and ``label`` an int index into it. Other keys are allowed.

    Raises:
        RowLabelError: the label is outside the label space (a `TaskFormatError`).
        TaskFormatError: any other violation; messages start with ``where``.
    """
    if not isinstance(obj, Mapping):
        raise TaskFormatError(f"{where}: row is not a JSON object")
    if "id" not in obj or "label" not in obj:
        raise TaskFormatError(f"{where}: row lacks 'id' or 'label'")
    if not _nonempty_str(obj["id"]):
        raise TaskFormatError(f"{where}: 'id' must be a non-empty string, got {obj['id']!r}")
    labels = list(meta["labels"])
    fields = {}
    for name in meta["fields"]:
        value = obj.get(name)
        if not _nonempty_str(value):
            raise TaskFormatError(f"{where}: field {name!r} missing or empty")
        fields[name] = value
    paper_subset = obj.get("paper_subset", False)
    if not isinstance(paper_subset, bool):
        raise TaskFormatError(f"{where}: paper_subset must be true or false, got {paper_subset!r}")
    kind = meta["kind"]
    if kind == "classification":
        if not isinstance(obj["label"], str) or obj["label"] not in labels:
            raise RowLabelError(f"{where}: label {obj['label']!r} not in {labels}")
        return Example(
            id=obj["id"],
            fields=fields,
            label=labels.index(obj["label"]),
            paper_subset=paper_subset,
        )
    if kind != "multiple_choice":
        raise TaskFormatError(f"{where}: unknown task kind {kind!r}")
    options = obj.get("options")
    if not isinstance(options, list) or len(options) < 2:
        raise TaskFormatError(f"{where}: multiple-choice row needs a list of >= 2 options")
    if len(options) > len(labels):
        raise TaskFormatError(f"{where}: {len(options)} options but only {len(labels)} letters")
    if not all(_nonempty_str(o) for o in options):
        raise TaskFormatError(f"{where}: options must be non-empty strings")
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(options):
        raise RowLabelError(f"{where}: label {label!r} is not an index into the options")
    return Example(
        id=obj["id"],
        fields=fields,
        label=label,
        options=tuple(options),
        paper_subset=paper_subset,
    )


def split_file(folder: Path, split: str) -> Path | None:
    """The file of ``split`` in a task folder: ``<split>.jsonl`` or ``<split>.jsonl.gz``
    (None if neither exists; both at once is an error, since they could disagree)."""
    plain, packed = folder / f"{split}.jsonl", folder / f"{split}.jsonl.gz"
    if plain.is_file() and packed.is_file():
        raise TaskFormatError(f"{folder}: both {plain.name} and {packed.name}; keep one")
    if plain.is_file():
        return plain
    return packed if packed.is_file() else None


def _read_lines(path: Path) -> list[str]:
    """All lines of a (possibly gzip-compressed) UTF-8 file, read whole."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt gzip stream
        raise TaskFormatError(f"{path}: unreadable ({type(err).__name__}: {err})") from err
    except UnicodeDecodeError as err:
        raise TaskFormatError(f"{path}: not UTF-8 text ({err.reason})") from err


def read_jsonl(path: Path, meta: Mapping[str, Any]) -> list[Example]:
    """Parse one split file (``.jsonl`` or ``.jsonl.gz``); a malformed row or a duplicate id
    raises naming the file and line."""
    rows: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"{where}: invalid JSON ({err.msg})") from err
        row = parse_row(obj, meta, where)
        if row.id in seen:
            raise TaskFormatError(
                f"{where}: duplicate row id {row.id!r} (first on line {seen[row.id]})"
            )
        seen[row.id] = lineno
        rows.append(row)
    return rows


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def check_meta(meta: Any, where: Path | str) -> None:
    """Refuse a ``meta.json`` whose required keys are missing or of the wrong type (a string
    where a list belongs would otherwise be split into characters)."""
    if not isinstance(meta, dict):
        raise TaskFormatError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    for key in ("kind", "labels", "instruction", "fields"):
        if key not in meta:
            raise TaskFormatError(f"{where}: missing key {key!r}")
    if not _string_list(meta["labels"]):
        raise TaskFormatError(
            f"{where}: 'labels' must be a list of non-empty strings, got {meta['labels']!r}"
        )
    if not _string_list(meta["fields"]) or not meta["fields"]:
        raise TaskFormatError(
            f"{where}: 'fields' must be a non-empty list of field names, got {meta['fields']!r}"
        )
    if not isinstance(meta["instruction"], str) or not meta["instruction"].strip():
        raise TaskFormatError(
            f"{where}: 'instruction' must be a non-empty string, got {meta['instruction']!r}"
        )
    if not isinstance(meta["kind"], str):
        raise TaskFormatError(f"{where}: 'kind' must be a string, got {meta['kind']!r}")
    roles = meta.get("field_roles", {})
    if not isinstance(roles, dict) or not all(isinstance(v, str) for v in roles.values()):
        raise TaskFormatError(f"{where}: 'field_roles' must map field names to strings")


def _unknown_task(name: str, root: Path) -> KeyError:
    available = sorted(p.parent.name for p in root.glob("*/meta.json"))
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"unknown task {name!r} in {root}.{hint} Available: {', '.join(available)}")


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
        raise _unknown_task(name, root)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TaskFormatError(f"{meta_path}: invalid JSON ({err.msg})") from err
    check_meta(meta, meta_path)
    counts = meta.get("counts") or {}
    if not isinstance(counts, dict) or any(type(n) is not int or n < 0 for n in counts.values()):
        raise TaskFormatError(
            f"{meta_path}: 'counts' must map splits to row counts (ints >= 0), got {counts!r}"
        )
    if meta.get("name", name) != name:
        raise TaskFormatError(
            f"{meta_path}: meta.json names the task {meta['name']!r} but its folder is "
            f"{name!r}; a task is identified by both, so they must agree (rename one)"
        )
    splits = {}
    for split in SPLITS:
        path = split_file(folder, split)
        if path is None:
            if split == "test" or counts.get(split):
                n = f"; meta.json counts {counts[split]} {split} rows" if counts.get(split) else ""
                raise TaskFormatError(f"{folder}: missing {split}.jsonl (or {split}.jsonl.gz){n}")
            continue
        rows = read_jsonl(path, meta)
        if split in counts and counts[split] != len(rows):
            raise TaskFormatError(
                f"{path}: {len(rows)} rows, but meta.json counts {counts[split]} (truncated or edited?)"
            )
        splits[split] = rows
    splits.setdefault("train", [])
    return Task(
        name=name,
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
