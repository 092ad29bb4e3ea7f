"""The fetchable tasks by name: the fixed tasks of ``fetch_specs.yaml`` (`REGISTRY`), the
language families (``sib200_<lang>``, ``nusax_senti_<lang>``; `FAMILIES`), `known_tasks` and
`resolve_task`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from .converters import (
    CONVERTERS,
    SENTIMENT3_LABELS,
    SIB200_LABEL_MAP,
    SIB200_LABELS,
    convert_nusax,
    convert_sib200,
)
from .spec import LABEL_SETS, PARQUET_REVISION, SPECS, SPECS_FILE, Row, TaskSpec

__all__ = [
    "DEFAULT_TASKS",
    "FAMILIES",
    "REGISTRY",
    "known_tasks",
    "nusax_spec",
    "resolve_task",
    "sib200_spec",
    "spec_from_doc",
]

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
    return [spec_from_doc(d) for d in SPECS["core"]]


def _extra_specs() -> list[TaskSpec]:
    """Further tasks with a folder in the shipped data/ (not needed by the spec's core experiments)."""
    return [spec_from_doc(d) for d in SPECS["extra"]]


# ---- families -------------------------------------------------------------------------------

_SIB200 = SPECS["families"]["sib200"]
_NUSAX = SPECS["families"]["nusax_senti"]
#: SIB-200 languages with a short name: ISO 639-3 -> (FLORES code, ISO 639-1 where one exists,
#: English name, resource level as used in the shipped data/).
SIB200_LANGUAGES: dict[str, tuple[str, str, str, str]] = {
    k: tuple(v) for k, v in _SIB200["languages"].items()
}
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
