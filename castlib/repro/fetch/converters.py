"""Per-task row converters: pure functions from a hub row to a castlib row (no I/O, no
randomness), named by the task entries of ``fetch_specs.yaml`` (`CONVERTERS`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .spec import LABEL_SETS, SPECS, ConversionError, LabelError, Row, SkipRow, is_nonempty_str

__all__ = ["CONVERTERS", "RACE_MAX_PASSAGE_CHARS", "SIB200_LABEL_MAP", "sciq_answer_position"]

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


SST2_LABELS = LABEL_SETS["sst2"]
BOOLQ_LABELS = LABEL_SETS["boolq"]
SENTIMENT3_LABELS = LABEL_SETS["sentiment3"]
SIB200_LABELS = LABEL_SETS["sib200"]
SUBJ_LABELS = LABEL_SETS["subj"]
DBPEDIA_LABELS = LABEL_SETS["dbpedia"]
LETTERS = LABEL_SETS["letters"]
RACE_MAX_PASSAGE_CHARS = 1500
#: SIB-200 category -> label word (fetch_specs.yaml).
SIB200_LABEL_MAP: dict[str, str] = dict(SPECS["families"]["sib200"]["label_map"])


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
    if is_nonempty_str(row.get("id")):
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
    if is_nonempty_str(row.get("id")):
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
