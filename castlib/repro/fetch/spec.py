"""What a fetchable task is: `TaskSpec`, the file that lists them (``fetch_specs.yaml``), the
errors a row conversion raises and the check that a converted row is one the loader accepts.

Every task is a small `TaskSpec`, written as data in ``fetch_specs.yaml`` (package data next to
this module, read by `castlib.repro.fetch.registry.spec_from_doc`): the hub dataset id, config
and split names, a *pure* ``convert_row(row) -> row`` function (named in the file, defined in
`castlib.repro.fetch.converters`; testable on in-memory rows), the label space, the instruction,
the input field names, language, licence and citation. Fetched rows are checked by the loader's
own validator (`castlib.tasks.parse_row`, through `validate_row`), so a fetched folder loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...tasks import RowLabelError, parse_row

__all__ = [
    "INSTALL_HINT",
    "LABEL_SETS",
    "MAX_FILE_BYTES",
    "PARQUET_REVISION",
    "SPECS",
    "SPECS_FILE",
    "SPLIT_ORDER",
    "ConversionError",
    "LabelError",
    "SkipRow",
    "TaskSpec",
    "is_nonempty_str",
    "validate_row",
]

Row = dict[str, Any]
Kind = Literal["classification", "multiple_choice"]

#: Order in which our splits are filled (test first, so train never steals test items).
SPLIT_ORDER: tuple[str, ...] = ("test", "dev", "train")
#: FORMAT.md: keep every file below 4 MiB.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Branch where the hub keeps a Parquet export of script-based datasets (datasets>=4 cannot run
#: loading scripts; castlib never passes ``trust_remote_code``).
PARQUET_REVISION = "refs/convert/parquet"
INSTALL_HINT = "castlib data fetch needs the 'datasets' library: pip install 'castlib[fetch]'"


# --------------------------------------------------------------------------------------------
# Errors raised by convert functions
# --------------------------------------------------------------------------------------------


class ConversionError(ValueError):
    """A hub row is malformed (missing/empty field, unexpected type)."""


class LabelError(ConversionError):
    """A hub row's label is outside the task's label space (e.g. -1 on unlabelled test splits)."""


class SkipRow(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A row a task deliberately filters out; ``str(exc)`` is the reason counted in the notes."""


# --------------------------------------------------------------------------------------------
# Task specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """How to turn one hub dataset into one castlib task folder.

    ``splits`` maps our split names (``train``, ``test``, optional ``dev``) to hub split names.
    ``train_cap``/``test_cap`` are task-level caps applied on top of ``fetch_tasks``' caps
    (low-resource *target* tasks keep a small train pool, as in the shipped ``data/``).
    ``order_key`` names a hub column to sort by before the seeded shuffle, so parallel
    (translated) datasets pick the same items in every language whatever the hub row order.
    """

    name: str
    title: str
    kind: Kind
    hub_id: str
    config: str | None
    splits: Mapping[str, str]
    convert_row: Callable[[Mapping[str, Any]], Row]
    labels: tuple[str, ...]
    instruction: str
    fields: tuple[str, ...]
    language: str
    license: str
    citation: str
    url: str = ""
    role: str = "source"
    field_roles: Mapping[str, str] | None = None
    train_cap: int | None = None
    test_cap: int | None = None
    revision: str | None = None
    order_key: str | None = None
    notes: str = ""
    extra_meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "train" not in self.splits or "test" not in self.splits:
            raise ValueError(f"{self.name}: splits must name 'train' and 'test'")
        unknown = set(self.splits) - set(SPLIT_ORDER)
        if unknown:
            raise ValueError(f"{self.name}: unknown split names {sorted(unknown)}")
        if self.kind == "multiple_choice" and "question" not in self.fields:
            raise ValueError(f"{self.name}: multiple-choice tasks need a 'question' field")
        if self.kind == "classification" and "text" not in self.fields:
            raise ValueError(f"{self.name}: classification tasks need a 'text' field")

    def meta_core(self) -> dict[str, Any]:
        """The meta keys that do not depend on a fetch (enough for :func:`validate_row`)."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "language": self.language,
            "labels": list(self.labels),
            "instruction": self.instruction,
            "fields": list(self.fields),
        }


# --------------------------------------------------------------------------------------------
# Row validation (FORMAT.md)
# --------------------------------------------------------------------------------------------


def is_nonempty_str(value: Any) -> bool:
    """Whether ``value`` is a string with a non-blank character."""
    return isinstance(value, str) and bool(value.strip())


def validate_row(row: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if ``row`` is not a valid jsonl row for a task with this ``meta``.

    The check is the loader's own, `castlib.tasks.parse_row` (FORMAT.md: a non-empty string
    ``id``, non-empty string fields, a classification label in ``meta.labels``, multiple-choice
    options as non-empty strings, one per option letter, and an int label index); a label
    outside the label space raises `LabelError`. Extra keys (``relation``...) are allowed.
    """
    try:
        parse_row(row, meta)
    except RowLabelError as exc:
        raise LabelError(str(exc)) from exc


#: The task specifications (`fetch_specs.yaml`, package data next to this module), read once at
#: import.
SPECS_FILE = Path(__file__).with_name("fetch_specs.yaml")


def _read_specs(path: Path = SPECS_FILE) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not {"label_sets", "core", "extra", "families"} <= set(doc):
        raise ValueError(f"{path}: expected the keys label_sets, core, extra and families")
    return doc


#: The parsed file: ``label_sets``, ``core``, ``extra`` and ``families``.
SPECS = _read_specs()
LABEL_SETS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in SPECS["label_sets"].items()}
