"""Fetch CAST tasks from the Hugging Face hub into castlib's normalised task format.

The format is the one described in ``data/FORMAT.md``: one folder per task holding
``meta.json``, ``train.jsonl``, ``test.jsonl`` and optionally ``dev.jsonl``.  This module is for
users with internet access who want to rebuild (or extend) the task folders themselves; it needs
the optional extra ``castlib[fetch]`` (the ``datasets`` library), imported lazily.

Design
------
* Every task is a small :class:`TaskSpec`, written as data in ``fetch_specs.yaml`` (package
  data next to this module, read by :func:`spec_from_doc`): the hub dataset id, config and
  split names, a *pure* ``convert_row(row) -> row`` function (named in the file, defined here;
  testable on in-memory rows), the label space, the instruction, the input field names,
  language, licence and citation.  Instructions and label
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

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from ..hub import HubUnreachableError, unreachable_reason
from ..tasks import RowLabelError, parse_row

__all__ = [
    "DEFAULT_TASKS",
    "FAMILIES",
    "REGISTRY",
    "ConversionError",
    "LabelError",
    "SkipRow",
    "TaskSpec",
    "fetch_task",
    "fetch_tasks",
    "known_tasks",
    "main",
    "resolve_task",
    "validate_row",
    "spec_from_doc",
]

log = logging.getLogger(__name__)

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


def _nonempty_str(value: Any) -> bool:
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


# --------------------------------------------------------------------------------------------
# Conversion helpers (pure)
# --------------------------------------------------------------------------------------------


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ConversionError(f"{key!r} is {type(value).__name__}, expected str")
    value = value.strip()
    if not value:
        raise ConversionError(f"{key!r} is empty")
    return value


def _label_word(value: Any, labels: Sequence[str], rename: Mapping[str, str] | None = None) -> str:
    """An int class index into ``labels`` or a label string (optionally renamed) -> label word."""
    if isinstance(value, bool):
        raise ConversionError(f"boolean label {value!r} where a class was expected")
    if isinstance(value, int):
        if 0 <= value < len(labels):
            return labels[value]
        raise LabelError(f"class index {value} outside 0..{len(labels) - 1}")
    if isinstance(value, str):
        word = value.strip()
        word = rename.get(word, word) if rename else word
        if word in labels:
            return word
        raise LabelError(f"label {value!r} is not in {list(labels)}")
    raise ConversionError(f"label of type {type(value).__name__}")


def _option_index(value: Any, n_options: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"answer index {value!r} is not an int")
    if not 0 <= value < n_options:
        raise LabelError(f"answer index {value} outside 0..{n_options - 1}")
    return value


def _options(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ConversionError(f"empty or non-string option {value!r}")
        out.append(value.strip())
    return out


def _mc_row(question: str, options: list[str], label: int, passage: str | None = None) -> Row:
    row: Row = {}
    if passage is not None:
        row["passage"] = passage
    row["question"] = question
    row["options"] = options
    row["label"] = label
    return row


def _require_n_options(options: Sequence[str], n: int) -> None:
    if len(options) != n:
        raise SkipRow(f"not {n} options")


# --------------------------------------------------------------------------------------------
# Per-task convert functions (pure: row in, row out; no I/O, no randomness)
# --------------------------------------------------------------------------------------------

#: The task specifications (`fetch_specs.yaml`, package data), read once at import.
SPECS_FILE = Path(__file__).with_name("fetch_specs.yaml")


def _read_specs(path: Path = SPECS_FILE) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not {"label_sets", "core", "extra", "families"} <= set(doc):
        raise ValueError(f"{path}: expected the keys label_sets, core, extra and families")
    return doc


_SPECS = _read_specs()
LABEL_SETS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _SPECS["label_sets"].items()}

SST2_LABELS = LABEL_SETS["sst2"]
BOOLQ_LABELS = LABEL_SETS["boolq"]
SENTIMENT3_LABELS = LABEL_SETS["sentiment3"]
SIB200_LABELS = LABEL_SETS["sib200"]
SUBJ_LABELS = LABEL_SETS["subj"]
DBPEDIA_LABELS = LABEL_SETS["dbpedia"]
LETTERS = LABEL_SETS["letters"]
RACE_MAX_PASSAGE_CHARS = 1500


def convert_text_label(
    row: Mapping[str, Any],
    *,
    text_key: str,
    label_key: str,
    labels: Sequence[str],
    hub_order: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> Row:
    """Generic single-text classification: ``{text, label}``.

    ``hub_order`` gives the label word of each hub class index when it differs from ``labels``.
    """
    value = row[label_key]
    if hub_order is not None and isinstance(value, int) and not isinstance(value, bool):
        word = _label_word(value, hub_order)
    else:
        word = _label_word(value, labels, rename)
    if word not in labels:
        raise LabelError(f"label {word!r} is not in {list(labels)}")
    return {"text": _text(row, text_key), "label": word}


def convert_pair_label(
    row: Mapping[str, Any],
    *,
    passage_key: str,
    text_key: str,
    label_key: str,
    labels: Sequence[str],
) -> Row:
    """Generic sentence-pair classification: ``{passage, text, label}``."""
    return {
        "passage": _text(row, passage_key),
        "text": _text(row, text_key),
        "label": _label_word(row[label_key], labels),
    }


def convert_sst2(row: Mapping[str, Any]) -> Row:
    """SetFit/sst2 (``text``, ``label`` 0/1) or GLUE sst2 (``sentence``, ``label``)."""
    key = "text" if "text" in row else "sentence"
    return {"text": _text(row, key), "label": _label_word(row["label"], SST2_LABELS)}


def convert_boolq(row: Mapping[str, Any]) -> Row:
    """google/boolq (``answer`` bool) or SuperGLUE boolq (``label`` 0/1)."""
    if "answer" in row:
        answer = row["answer"]
        if not isinstance(answer, bool):
            raise ConversionError(f"'answer' is {answer!r}, expected a bool")
        label = "true" if answer else "false"
    else:
        label = _label_word(row["label"], BOOLQ_LABELS)
    return {"passage": _text(row, "passage"), "text": _text(row, "question"), "label": label}


def convert_arc(row: Mapping[str, Any]) -> Row:
    """allenai/ai2_arc: ``choices = {text, label}``, ``answerKey`` a letter or a digit."""
    choices = row["choices"]
    options = _options(choices["text"])
    keys = [str(k).strip() for k in choices["label"]]
    if len(keys) != len(options):
        raise ConversionError("choices.text and choices.label differ in length")
    _require_n_options(options, 4)
    answer = str(row["answerKey"]).strip()
    if answer not in keys:
        raise LabelError(f"answerKey {answer!r} not among {keys}")
    out = {"id": _text(row, "id")}
    out.update(_mc_row(_text(row, "question"), options, keys.index(answer)))
    return out


def convert_commonsense_qa(row: Mapping[str, Any]) -> Row:
    """tau/commonsense_qa: 5 lettered choices; ``answerKey`` is empty on the unlabelled test."""
    choices = row["choices"]
    options = _options(choices["text"])
    keys = [str(k).strip() for k in choices["label"]]
    _require_n_options(options, 5)
    answer = str(row["answerKey"]).strip()
    if answer not in keys:
        raise LabelError(f"answerKey {answer!r} not among {keys}")
    out: Row = {}
    if _nonempty_str(row.get("id")):
        out["id"] = str(row["id"]).strip()
    out.update(_mc_row(_text(row, "question"), options, keys.index(answer)))
    return out


def convert_race(row: Mapping[str, Any]) -> Row:
    """ehovy/race: ``article``, ``question``, 4 ``options``, ``answer`` letter.

    Items whose passage exceeds ``RACE_MAX_PASSAGE_CHARS`` are skipped (as in the shipped data/).
    """
    passage = _text(row, "article")
    if len(passage) > RACE_MAX_PASSAGE_CHARS:
        raise SkipRow(f"passage longer than {RACE_MAX_PASSAGE_CHARS} characters")
    options = _options(row["options"])
    _require_n_options(options, 4)
    answer = str(row["answer"]).strip()
    if answer not in LETTERS[:4]:
        raise LabelError(f"answer {answer!r} is not a letter A-D")
    return _mc_row(_text(row, "question"), options, LETTERS.index(answer), passage=passage)


def convert_financial_phrasebank(row: Mapping[str, Any]) -> Row:
    """takala/financial_phrasebank: ``sentence``, ``label`` 0 negative / 1 neutral / 2 positive."""
    return {
        "text": _text(row, "sentence"),
        "label": _label_word(row["label"], SENTIMENT3_LABELS),
    }


def convert_medmcqa(row: Mapping[str, Any]) -> Row:
    """openlifescienceai/medmcqa: ``opa..opd``, ``cop`` 0-3 (-1 on the unlabelled test)."""
    options = _options([row["opa"], row["opb"], row["opc"], row["opd"]])
    out: Row = {}
    if _nonempty_str(row.get("id")):
        out["id"] = str(row["id"]).strip()
    out.update(_mc_row(_text(row, "question"), options, _option_index(row["cop"], 4)))
    return out


def sciq_answer_position(question: str, n_options: int = 4) -> int:
    """Deterministic slot for SciQ's correct answer: sha256 of the question, mod ``n_options``."""
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()
    return int(digest, 16) % n_options


def convert_sciq(row: Mapping[str, Any]) -> Row:
    """allenai/sciq: ``correct_answer`` + ``distractor1..3``.

    The hub keeps the answer in its own column, so its position among the options is chosen by
    :func:`sciq_answer_position` (a hash of the question: deterministic, roughly balanced).
    """
    question = _text(row, "question")
    correct = _text(row, "correct_answer")
    distractors = _options([row["distractor1"], row["distractor2"], row["distractor3"]])
    if correct in distractors:
        raise ConversionError("correct answer repeated among the distractors")
    pos = sciq_answer_position(question)
    options = distractors[:pos] + [correct] + distractors[pos:]
    return _mc_row(question, options, pos)


def convert_social_iqa(row: Mapping[str, Any]) -> Row:
    """allenai/social_i_qa: ``context``, ``question``, ``answerA..C``, ``label`` "1".."3"."""
    options = _options([row["answerA"], row["answerB"], row["answerC"]])
    raw = row["label"]
    if isinstance(raw, bool):
        raise ConversionError("boolean label")
    try:
        one_based = int(str(raw).strip())
    except ValueError as exc:
        raise LabelError(f"label {raw!r} is not 1, 2 or 3") from exc
    label = _option_index(one_based - 1, 3)
    return _mc_row(_text(row, "question"), options, label, passage=_text(row, "context"))


def convert_sib200(row: Mapping[str, Any], *, name: str) -> Row:
    """Davlan/sib200: ``index_id``, ``category``, ``text``; id = FLORES index (parallel)."""
    out: Row = {}
    if row.get("index_id") is not None:
        out["id"] = f"{name}-{row['index_id']}"
    out["text"] = _text(row, "text")
    out["label"] = _label_word(row["category"], SIB200_LABELS, SIB200_LABEL_MAP)
    return out


def convert_nusax(row: Mapping[str, Any], *, name: str) -> Row:
    """indonlp/NusaX-senti: ``id``, ``text``, ``label`` (negative/neutral/positive)."""
    out: Row = {}
    if row.get("id") is not None and str(row["id"]).strip():
        out["id"] = f"{name}-{str(row['id']).strip()}"
    out["text"] = _text(row, "text")
    out["label"] = _label_word(row["label"], SENTIMENT3_LABELS)
    return out


def convert_subj(row: Mapping[str, Any]) -> Row:
    """SetFit/subj: uses ``label_text`` (the index order is not relied on)."""
    if "label_text" not in row:
        raise ConversionError("SetFit/subj rows need 'label_text'")
    return {
        "text": _text(row, "text"),
        "label": _label_word(str(row["label_text"]), SUBJ_LABELS),
    }


def convert_dbpedia(row: Mapping[str, Any]) -> Row:
    """fancyzhx/dbpedia_14: ``title``, ``content``, ``label`` 0-13 -> 'title: content'."""
    return {
        "text": f"{_text(row, 'title')}: {_text(row, 'content')}",
        "label": _label_word(row["label"], DBPEDIA_LABELS),
    }


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Row converters a spec may name (``convert`` in fetch_specs.yaml).
CONVERTERS: dict[str, Callable[..., Row]] = {
    fn.__name__: fn
    for fn in (
        convert_text_label,
        convert_pair_label,
        convert_sst2,
        convert_boolq,
        convert_arc,
        convert_commonsense_qa,
        convert_race,
        convert_financial_phrasebank,
        convert_medmcqa,
        convert_sciq,
        convert_social_iqa,
        convert_subj,
        convert_dbpedia,
    )
}
_LABEL_ARGS = ("labels", "hub_order")


def _converter(spec: Any, task: str) -> Callable[[Mapping[str, Any]], Row]:
    if isinstance(spec, str):
        spec = {"function": spec}
    args = dict(spec)
    name = args.pop("function", None)
    if name not in CONVERTERS:
        raise ValueError(f"{SPECS_FILE.name}: task {task!r} names unknown converter {name!r}")
    for key in _LABEL_ARGS:
        if key in args:
            args[key] = LABEL_SETS[args[key]]
    return partial(CONVERTERS[name], **args) if args else CONVERTERS[name]


def spec_from_doc(doc: Mapping[str, Any]) -> TaskSpec:
    """A `TaskSpec` from one task entry of fetch_specs.yaml (see the file's header)."""
    fields = dict(doc)
    name = fields.get("name", "?")
    labels = fields.pop("labels")
    fields["labels"] = LABEL_SETS[labels] if isinstance(labels, str) else tuple(labels)
    fields["convert_row"] = _converter(fields.pop("convert"), name)
    fields["fields"] = tuple(fields["fields"])
    try:
        return TaskSpec(**fields)
    except TypeError as exc:
        raise ValueError(f"{SPECS_FILE.name}: task {name!r}: {exc}") from None


def _core_specs() -> list[TaskSpec]:
    return [spec_from_doc(d) for d in _SPECS["core"]]


def _extra_specs() -> list[TaskSpec]:
    """Further tasks with a folder in the shipped data/ (not needed by the spec's core experiments)."""
    return [spec_from_doc(d) for d in _SPECS["extra"]]


# ---- families -------------------------------------------------------------------------------

_SIB200 = _SPECS["families"]["sib200"]
_NUSAX = _SPECS["families"]["nusax_senti"]
#: SIB-200 languages with a short name: ISO 639-3 -> (FLORES code, ISO 639-1 where one exists,
#: English name, resource level as used in the shipped data/).
SIB200_LANGUAGES: dict[str, tuple[str, str, str, str]] = {
    k: tuple(v) for k, v in _SIB200["languages"].items()
}
SIB200_LABEL_MAP: dict[str, str] = dict(_SIB200["label_map"])
#: Full-pool (source) SIB-200 languages; every other language keeps a small train pool.
SIB200_SOURCES: dict[str, str] = dict(_SIB200["sources"])
SIB200_TARGET_TRAIN_CAP: int = _SIB200["target_train_cap"]
SIB200_DEFAULT_LANGUAGES: tuple[str, ...] = tuple(_SIB200["default_languages"])
_SIB200_INSTRUCTION: str = _SIB200["instruction"]

#: NusaX-Senti languages (hub config = ISO 639-3) -> (language code, English name, level).
NUSAX_LANGUAGES: dict[str, tuple[str, str, str]] = {
    k: tuple(v) for k, v in _NUSAX["languages"].items()
}
NUSAX_SOURCES: dict[str, str] = dict(_NUSAX["sources"])
NUSAX_TARGET_TRAIN_CAP: int = _NUSAX["target_train_cap"]
_SENTIMENT3_INSTRUCTION: str = _NUSAX["instruction"]


def sib200_spec(lang: str) -> TaskSpec:
    """The SIB-200 task for one language: ISO 639-3 (``swh``) or FLORES code (``swh_Latn``)."""
    if lang in SIB200_LANGUAGES:
        code = lang
        flores, iso, language_name, level = SIB200_LANGUAGES[lang]
    elif "_" in lang and len(lang.split("_")) == 2 and all(lang.split("_")):
        code, script = lang.split("_")
        known = SIB200_LANGUAGES.get(code)
        if known is not None and known[0] == lang:
            flores, iso, language_name, level = known
        else:
            flores, iso, language_name, level = lang, code, f"{code} ({script})", "unknown"
            if known is not None:  # a second script of a known language: keep it distinct
                code = f"{code}_{script.lower()}"
    else:
        raise ValueError(
            f"unknown SIB-200 language {lang!r}: use one of {sorted(SIB200_LANGUAGES)} or a "
            "FLORES-200 code such as 'swh_Latn'"
        )
    name = f"sib200_{code}"
    role = SIB200_SOURCES.get(code, "target")
    train_cap = None if code in SIB200_SOURCES else SIB200_TARGET_TRAIN_CAP
    return TaskSpec(
        name=name,
        title=f"SIB-200 ({language_name})",
        kind="classification",
        hub_id="Davlan/sib200",
        config=flores,
        splits={"train": "train", "test": "test", "dev": "validation"},
        convert_row=partial(convert_sib200, name=name),
        labels=SIB200_LABELS,
        instruction=_SIB200_INSTRUCTION,
        fields=("text",),
        language=iso,
        license=(
            "CC BY-SA 4.0 (as stated on the Davlan/sib200 dataset card; text from FLORES-200, "
            "CC BY-SA 4.0)"
        ),
        citation=(
            "Adelani et al., 2024, EACL (SIB-200: topic classification in 200+ languages and "
            "dialects; FLORES-200 by NLLB Team, 2022)"
        ),
        url="https://github.com/dadelani/sib-200",
        role=role,
        train_cap=train_cap,
        revision=PARQUET_REVISION,
        order_key="index_id",
        notes=f"SIB-200 {flores} (FLORES-200 sentences, parallel: row id = FLORES index_id,"
        " identical across languages; rows are ordered by index_id before the seeded shuffle so"
        " every language keeps the same items). Category 'science/technology' renamed 'science'.",
        extra_meta={
            "family": "sib200",
            "language_name": language_name,
            "resource_level": level,
            "parallel": True,
            "label_map": dict(SIB200_LABEL_MAP),
            "flores_code": flores,
        },
    )


def nusax_spec(lang: str) -> TaskSpec:
    """The NusaX-Senti task for one language (hub config name, e.g. ``jav``)."""
    if lang not in NUSAX_LANGUAGES:
        raise ValueError(f"unknown NusaX language {lang!r}: use one of {sorted(NUSAX_LANGUAGES)}")
    iso, language_name, level = NUSAX_LANGUAGES[lang]
    name = f"nusax_senti_{lang}"
    return TaskSpec(
        name=name,
        title=f"NusaX-Senti ({language_name})",
        kind="classification",
        hub_id="indonlp/NusaX-senti",
        config=lang,
        splits={"train": "train", "test": "test", "dev": "validation"},
        convert_row=partial(convert_nusax, name=name),
        labels=SENTIMENT3_LABELS,
        instruction=_SENTIMENT3_INSTRUCTION,
        fields=("text",),
        language=iso,
        license="CC BY-SA 4.0 (NusaX datasets/LICENSE)",
        citation=(
            "Winata et al., 2023, EACL (NusaX: Multilingual Parallel Sentiment Dataset for 10 "
            "Indonesian Local Languages)"
        ),
        url="https://github.com/IndoNLP/nusax",
        role=NUSAX_SOURCES.get(lang, "target"),
        train_cap=None if lang in NUSAX_SOURCES else NUSAX_TARGET_TRAIN_CAP,
        revision=PARQUET_REVISION,
        order_key="id",
        notes="Parallel: row id = the shared NusaX item id (the same review in every language);"
        " rows are ordered by id before the seeded shuffle so every language keeps the same items.",
        extra_meta={
            "family": "nusax_senti",
            "language_name": language_name,
            "resource_level": level,
            "parallel": True,
            "label_map": {w: w for w in SENTIMENT3_LABELS},
        },
    )


#: Fixed tasks by name.
REGISTRY: dict[str, TaskSpec] = {spec.name: spec for spec in _core_specs() + _extra_specs()}
#: Families: ``<prefix>_<lang>`` -> factory(lang).
FAMILIES: dict[str, Callable[[str], TaskSpec]] = {"sib200": sib200_spec, "nusax_senti": nusax_spec}
_FAMILY_EXAMPLES = {"sib200": sorted(SIB200_LANGUAGES), "nusax_senti": sorted(NUSAX_LANGUAGES)}
#: What ``fetch_tasks(None, ...)`` fetches: the spec's and the paper's tasks + SIB-200 pairs.
DEFAULT_TASKS: tuple[str, ...] = tuple(s.name for s in _core_specs()) + tuple(
    f"sib200_{lang}" for lang in SIB200_DEFAULT_LANGUAGES
)


def known_tasks() -> list[str]:
    """Every fetchable name: the fixed tasks and each family's listed languages."""
    names = list(REGISTRY)
    for prefix, langs in _FAMILY_EXAMPLES.items():
        names.extend(f"{prefix}_{lang}" for lang in langs)
    return names


def resolve_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` for a task name; ``ValueError`` (listing known names) if unknown."""
    if name in REGISTRY:
        return REGISTRY[name]
    for prefix, factory in FAMILIES.items():
        if name.startswith(prefix + "_") and len(name) > len(prefix) + 1:
            try:
                return factory(name[len(prefix) + 1 :])
            except ValueError as exc:
                raise ValueError(f"unknown task {name!r}: {exc}") from None
    families = "; ".join(
        f"{prefix}_<lang> with lang in {', '.join(langs)}"
        for prefix, langs in _FAMILY_EXAMPLES.items()
    )
    raise ValueError(
        f"unknown task {name!r}. Known tasks: {', '.join(REGISTRY)}. Families: {families}"
        " (sib200 also takes any FLORES-200 code, e.g. sib200_swh_Latn)."
    )


# --------------------------------------------------------------------------------------------
# Hub access (the only functions that touch the network; tests replace them)
# --------------------------------------------------------------------------------------------


def _hub_config(spec: TaskSpec, revision: str | None) -> str | None:
    """The config name as the given revision lays it out (a folder on the Parquet export)."""
    if revision == PARQUET_REVISION:
        return spec.config or "default"
    return spec.config


def _load_split(
    spec: TaskSpec, split: str, revision: str | None = None, parquet_export: bool = False
) -> Sequence[Mapping[str, Any]]:
    """Load one hub split as a random-access sequence of row dicts (a ``datasets.Dataset``).

    ``revision`` pins a commit.  ``parquet_export=True`` reads the hub's Parquet export branch,
    where each config is a folder (``<config>/<split>/*.parquet``), so the config is passed as
    ``data_dir`` rather than as a builder name.
    """
    try:
        import datasets  # noqa: PLC0415 - optional extra, imported lazily
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    if parquet_export:
        ds = datasets.load_dataset(
            spec.hub_id, data_dir=spec.config or "default", split=split, revision=revision
        )
    else:
        ds = datasets.load_dataset(spec.hub_id, spec.config, split=split, revision=revision)
    return ds  # type: ignore[no-any-return]


def _resolve_commit(hub_id: str, revision: str | None) -> str | None:
    """The commit sha a revision of a hub dataset points to (None if it cannot be resolved)."""
    try:
        from huggingface_hub import HfApi  # noqa: PLC0415 - installed with datasets
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    try:
        info = HfApi().dataset_info(hub_id, revision=revision)
    except Exception as exc:  # noqa: BLE001 - network/auth errors: record 'unknown'
        log.warning("could not resolve the commit of %s@%s: %s", hub_id, revision or "main", exc)
        return None
    return getattr(info, "sha", None)


def _is_script_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "script" in text or "trust_remote_code" in text


def _load_all(
    spec: TaskSpec,
) -> tuple[dict[str, Sequence[Mapping[str, Any]]], str | None, str]:
    """Load every hub split the spec uses, pinned to one commit.

    Returns ``(rows by hub split, commit sha or None, revision used)``.  A script-based hub
    dataset (which ``datasets>=4`` refuses to run) is retried from its Parquet export branch.
    """
    revisions = [spec.revision or "main"]
    if PARQUET_REVISION not in revisions:
        revisions.append(PARQUET_REVISION)
    last_exc: Exception | None = None
    for revision in revisions:
        commit = _resolve_commit(spec.hub_id, revision)
        pin = commit or (None if revision == "main" else revision)
        try:
            loaded: dict[str, Sequence[Mapping[str, Any]]] = {}
            for hub_split in dict.fromkeys(spec.splits.values()):
                loaded[hub_split] = _load_split(
                    spec, hub_split, revision=pin, parquet_export=revision == PARQUET_REVISION
                )
            return loaded, commit, revision
        except ImportError:
            raise
        except Exception as exc:
            last_exc = exc
            if revision == PARQUET_REVISION or not _is_script_error(exc):
                raise
            log.info("%s: %s; retrying from %s", spec.hub_id, exc, PARQUET_REVISION)
    assert last_exc is not None  # pragma: no cover
    raise last_exc  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@dataclass
class SplitStats:
    """What happened to one of our splits during a fetch (reported in ``meta.notes``)."""

    hub_split: str
    hub_rows: int
    cap: int
    examined: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    trimmed_for_size: int = 0


def _sort_token(value: Any) -> tuple[int, Any]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value)
    text = str(value).strip()
    return (0, int(text)) if text.isdigit() else (1, text)


def _input_key(row: Mapping[str, Any], spec: TaskSpec) -> str:
    parts: list[Any] = [row.get(f) for f in spec.fields]
    if spec.kind == "multiple_choice":
        parts.append(row.get("options"))
    return json.dumps(parts, ensure_ascii=False)


def _shuffled_order(
    data: Sequence[Mapping[str, Any]], seed: int, order_key: str | None
) -> list[int]:
    indices = list(range(len(data)))
    if order_key is not None:
        indices.sort(key=lambda i: _sort_token(data[i].get(order_key, "")))
    random.Random(seed).shuffle(indices)
    return indices


def _jsonl_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def select_rows(
    spec: TaskSpec,
    loaded: Mapping[str, Sequence[Mapping[str, Any]]],
    caps: Mapping[str, int],
    seed: int = 0,
) -> tuple[dict[str, list[Row]], dict[str, SplitStats]]:
    """Convert, validate, de-duplicate and subsample rows for every split of ``spec``.

    Deterministic for a given ``seed``.  Pure apart from reading ``loaded``.
    """
    meta = spec.meta_core()
    orders = {hs: _shuffled_order(data, seed, spec.order_key) for hs, data in loaded.items()}
    cursors = dict.fromkeys(loaded, 0)
    seen_inputs: set[str] = set()
    seen_ids: set[str] = set()
    out: dict[str, list[Row]] = {}
    stats: dict[str, SplitStats] = {}
    for split in SPLIT_ORDER:
        if split not in spec.splits:
            continue
        hub_split = spec.splits[split]
        data = loaded[hub_split]
        order = orders[hub_split]
        st = SplitStats(hub_split=hub_split, hub_rows=len(data), cap=caps[split])
        picked: list[tuple[int, Row, str]] = []
        size = 0
        while len(picked) < st.cap and cursors[hub_split] < len(order):
            index = order[cursors[hub_split]]
            cursors[hub_split] += 1
            st.examined += 1
            try:
                row = spec.convert_row(dict(data[index]))
            except SkipRow as exc:
                st.skipped[f"filtered: {exc}"] += 1
                continue
            except LabelError:
                st.skipped["label outside the label space"] += 1
                continue
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                st.skipped["conversion failed"] += 1
                continue
            row_id = str(row.pop("id", "") or "").strip() or f"{spec.name}-{hub_split}-{index}"
            if row_id in seen_ids:
                row_id = f"{row_id}-{hub_split}-{index}"
            row = {"id": row_id, **row}
            try:
                validate_row(row, meta)
            except LabelError:
                st.skipped["label outside the label space"] += 1
                continue
            except ValueError:
                st.skipped["invalid row"] += 1
                continue
            key = _input_key(row, spec)
            if key in seen_inputs:
                st.skipped["duplicate input"] += 1
                continue
            line_bytes = len(_jsonl_line(row).encode("utf-8"))
            if size + line_bytes >= MAX_FILE_BYTES:
                st.trimmed_for_size += 1
                break
            size += line_bytes
            seen_inputs.add(key)
            seen_ids.add(row_id)
            picked.append((index, row, key))
        picked.sort(key=lambda item: item[0])
        out[split] = [row for _, row, _ in picked]
        st.kept = len(picked)
        stats[split] = st
    return out, stats


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split_note(split: str, st: SplitStats, seed: int) -> str:
    if st.kept >= st.hub_rows and not st.skipped:
        how = f"all {st.kept} rows of hub split '{st.hub_split}'"
    else:
        how = (
            f"seed-{seed} sample of {st.kept} (cap {st.cap}) from hub split '{st.hub_split}' "
            f"({st.hub_rows} rows, {st.examined} examined in shuffled order)"
        )
    text = f"{split} = {how}"
    if st.skipped:
        details = ", ".join(f"{n} {reason}" for reason, n in sorted(st.skipped.items()))
        text += f"; skipped {sum(st.skipped.values())} ({details})"
    else:
        text += "; skipped 0"
    if st.trimmed_for_size:
        text += f"; stopped early to keep the file under {MAX_FILE_BYTES // (1024 * 1024)} MiB"
    return text


def build_meta(
    spec: TaskSpec,
    counts: Mapping[str, int],
    stats: Mapping[str, SplitStats],
    *,
    commit: str | None,
    revision: str,
    seed: int,
) -> dict[str, Any]:
    """The ``meta.json`` content for a fetched task (FORMAT.md keys, the shipped data/ key order)."""
    config = _hub_config(spec, revision)
    paths = [f"{config or 'default'}/{hs}" for hs in dict.fromkeys(spec.splits.values())]
    split_notes = "; ".join(_split_note(s, stats[s], seed) for s in SPLIT_ORDER if s in stats)
    notes = (
        f"Fetched by castlib.repro.fetch from the Hugging Face hub dataset {spec.hub_id}"
        f" (config {config or 'default'}, revision {revision}, commit {commit or 'unknown'}). "
        f"{split_notes}. Splits are filled test, dev, train; a row is kept only once "
        "(duplicate inputs skipped), kept rows are in hub order."
    )
    if spec.notes:
        notes += " " + spec.notes
    meta: dict[str, Any] = spec.meta_core()
    meta["source"] = {
        "repo": spec.hub_id,
        "commit": commit or "unknown",
        "paths": paths,
        "url": spec.url or f"https://huggingface.co/datasets/{spec.hub_id}",
    }
    meta["license"] = spec.license
    meta["citation"] = spec.citation
    meta["counts"] = {s: int(counts.get(s, 0)) for s in ("train", "test", "dev")}
    meta["notes"] = notes
    if spec.field_roles:
        meta["field_roles"] = dict(spec.field_roles)
    meta["role"] = spec.role
    meta.update(spec.extra_meta)
    return meta


def _caps(spec: TaskSpec, max_train: int, max_test: int) -> dict[str, int]:
    def cap(limit: int, task_cap: int | None) -> int:
        return limit if task_cap is None else min(limit, task_cap)

    return {
        "train": cap(max_train, spec.train_cap),
        "test": cap(max_test, spec.test_cap),
        "dev": max_test,
    }


def fetch_task(
    spec: TaskSpec,
    data_dir: str | Path,
    max_train: int = 2000,
    max_test: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Fetch one task into ``<data_dir>/<spec.name>``; returns the folder."""
    if max_train < 0 or max_test < 0:
        raise ValueError("max_train and max_test must be >= 0")
    out_dir = Path(data_dir) / spec.name
    meta_path = out_dir / "meta.json"
    if meta_path.exists() and not overwrite:
        log.info("%s: %s exists, skipping (use overwrite=True to refetch)", spec.name, meta_path)
        return out_dir
    reason = unreachable_reason()
    if reason is not None:
        raise HubUnreachableError(
            f"cannot fetch {spec.name} ({spec.hub_id}): the Hugging Face hub is unreachable: "
            f"{reason}"
        )
    log.info("%s: loading %s (%s)", spec.name, spec.hub_id, spec.config or "default")
    loaded, commit, revision = _load_all(spec)
    rows, stats = select_rows(spec, loaded, _caps(spec, max_train, max_test), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # from here on, the folder reads as partial until done
    for split in ("train", "test", "dev"):
        path = out_dir / f"{split}.jsonl"
        (out_dir / f"{split}.jsonl.gz").unlink(missing_ok=True)  # a shipped copy is replaced
        if split in rows:
            _atomic_write(path, "".join(_jsonl_line(r) for r in rows[split]))
        else:
            path.unlink(missing_ok=True)
    counts = {split: len(r) for split, r in rows.items()}
    meta = build_meta(spec, counts, stats, commit=commit, revision=revision, seed=seed)
    _atomic_write(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("%s: wrote %s (%s)", spec.name, out_dir, counts)
    return out_dir


def fetch_tasks(
    names: list[str] | None,
    data_dir: str | Path,
    max_train: int = 2000,
    max_test: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Download tasks from the Hugging Face hub and write them in castlib's task format.

    ``names=None`` fetches :data:`DEFAULT_TASKS`.  Every name is resolved before anything is
    downloaded, so an unknown name raises ``ValueError`` (listing the known ones) up front.
    Existing complete folders (with ``meta.json``) are kept unless ``overwrite``.
    Needs ``pip install 'castlib[fetch]'``.  Returns the task folders, in ``names`` order.
    """
    specs = [resolve_task(n) for n in (DEFAULT_TASKS if names is None else names)]
    return [
        fetch_task(
            s, data_dir, max_train=max_train, max_test=max_test, seed=seed, overwrite=overwrite
        )
        for s in specs
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castlib data fetch",
        description=(
            "Download tasks from the Hugging Face hub into castlib's task format "
            "(needs: pip install 'castlib[fetch]')."
        ),
    )
    parser.add_argument(
        "tasks",
        nargs="*",
        metavar="TASK",
        help="task names (default: the spec/paper tasks and SIB-200 languages); "
        "families take a language: sib200_<lang>, nusax_senti_<lang>",
    )
    parser.add_argument("--data-dir", type=Path, help="folder to write <task>/ folders into")
    parser.add_argument("--max-train", type=int, default=2000, help="train cap (default 2000)")
    parser.add_argument("--max-test", type=int, default=1000, help="test/dev cap (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="refetch existing tasks")
    parser.add_argument("--list", action="store_true", help="list task names and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``castlib data fetch`` entry point; returns a process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in known_tasks():
            print(name)
        return 0
    if args.data_dir is None:
        parser.error("--data-dir is required")
    if args.max_train < 0 or args.max_test < 0:
        parser.error("--max-train and --max-test must be >= 0")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.tasks or list(DEFAULT_TASKS)
    try:
        specs = [resolve_task(n) for n in names]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pending = [
        s for s in specs if args.overwrite or not (args.data_dir / s.name / "meta.json").exists()
    ]
    reason = unreachable_reason() if pending else None
    if reason is not None:
        print(
            f"error: the Hugging Face hub is unreachable ({reason}); cannot fetch "
            f"{', '.join(s.name for s in pending)}",
            file=sys.stderr,
        )
        return 1
    failed: list[str] = []
    for spec in specs:
        try:
            path = fetch_task(
                spec,
                args.data_dir,
                max_train=args.max_train,
                max_test=args.max_test,
                seed=args.seed,
                overwrite=args.overwrite,
            )
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - report and go on with the other tasks
            print(f"error: {spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(spec.name)
            continue
        print(path)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
