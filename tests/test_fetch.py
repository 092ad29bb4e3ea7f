"""Offline tests for castlib.repro.fetch: pure row conversion, validation and a fake-hub fetch."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from castlib.repro import fetch
from castlib.repro.fetch import (
    REGISTRY,
    ConversionError,
    LabelError,
    SkipRow,
    TaskSpec,
    download,
    fetch_tasks,
    resolve_task,
    validate_row,
)
from castlib.tasks import _read_lines, repo_data_dir, split_file


def _hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests fake the hub; its reachability check (castlib.hub) is faked to pass."""
    monkeypatch.setattr(download, "unreachable_reason", lambda timeout=3.0: None)


@pytest.fixture(autouse=True)
def _fake_hub_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_reachable(monkeypatch)


META_KEYS = {
    "name",
    "title",
    "kind",
    "language",
    "labels",
    "instruction",
    "fields",
    "source",
    "license",
    "citation",
    "counts",
    "notes",
    "role",
}

# ------------------------------------------------------------------------------------------
# Hand-written rows shaped like each hub dataset's rows, with the expected converted row
# ------------------------------------------------------------------------------------------

FOUR = ["a leg muscle relaxing", "a bacterial population", "viral particles", "carbohydrates"]

SAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sst2": (
        {"text": "a gorgeous , witty film .", "label": 1, "label_text": "positive"},
        {"text": "a gorgeous , witty film .", "label": "positive"},
    ),
    "ag_news": (
        {"text": "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - ...", "label": 2},
        {"label": "business"},
    ),
    "boolq": (
        {"question": "is the sky blue", "answer": True, "passage": "The sky is blue by day."},
        {"passage": "The sky is blue by day.", "text": "is the sky blue", "label": "true"},
    ),
    "mnli": (
        {"premise": "A man sleeps.", "hypothesis": "A man runs.", "label": 2, "idx": 7},
        {"passage": "A man sleeps.", "text": "A man runs.", "label": "contradiction"},
    ),
    "arc_easy": (
        {
            "id": "Mercury_7220990",
            "question": "Which factor will most likely cause a person to develop a fever?",
            "choices": {"text": FOUR, "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {"id": "Mercury_7220990", "options": FOUR, "label": 1},
    ),
    "arc_challenge": (
        {
            "id": "NYSEDREGS_2011_4_12",
            "question": "Which is a source of energy?",
            "choices": {
                "text": ["sand", "rock", "sunlight", "salt"],
                "label": ["1", "2", "3", "4"],
            },
            "answerKey": "3",
        },
        {"id": "NYSEDREGS_2011_4_12", "label": 2},
    ),
    "commonsense_qa": (
        {
            "id": "075e483d21c29a511267ef62bedc0461",
            "question": "Where might he go?",
            "question_concept": "people",
            "choices": {
                "label": ["A", "B", "C", "D", "E"],
                "text": ["race track", "populated areas", "the desert", "apartment", "roadblock"],
            },
            "answerKey": "B",
        },
        {"id": "075e483d21c29a511267ef62bedc0461", "label": 1},
    ),
    "race": (
        {
            "example_id": "middle4227.txt",
            "article": "Tom has a dog. The dog is black.",
            "answer": "C",
            "question": "What colour is the dog?",
            "options": ["white", "brown", "black", "grey"],
        },
        {"passage": "Tom has a dog. The dog is black.", "label": 2},
    ),
    "financial_phrasebank": (
        {"sentence": "Operating profit fell to EUR 1.2 mn .", "label": 0},
        {"text": "Operating profit fell to EUR 1.2 mn .", "label": "negative"},
    ),
    "medmcqa": (
        {
            "id": "e9ad821a-c438-4965-9f77-760819dfa155",
            "question": "Chronic urethral obstruction leads to:",
            "opa": "Hyperplasia",
            "opb": "Hyperophy",
            "opc": "Atrophy",
            "opd": "Dyplasia",
            "cop": 2,
            "choice_type": "single",
            "exp": "...",
            "subject_name": "Anatomy",
            "topic_name": "Urinary tract",
        },
        {"options": ["Hyperplasia", "Hyperophy", "Atrophy", "Dyplasia"], "label": 2},
    ),
    "sciq": (
        {
            "question": "What type of organism is commonly used in preparation of foods?",
            "distractor1": "viruses",
            "distractor2": "protozoa",
            "distractor3": "gymnosperms",
            "correct_answer": "mesophilic organisms",
            "support": "Mesophiles grow best in moderate temperature ...",
        },
        {},
    ),
    "social_iqa": (
        {
            "context": "Kai found one for sale online but it was too much money for her.",
            "question": "What does Kai need to do before this?",
            "answerA": "cheaper",
            "answerB": "Open up her laptop",
            "answerC": "save money",
            "label": "2",
        },
        {"options": ["cheaper", "Open up her laptop", "save money"], "label": 1},
    ),
    "sst5": (
        {"text": "a mess .", "label": 0, "label_text": "very negative"},
        {"label": "very negative"},
    ),
    "trec": (
        {"text": "How far is it from Denver to Aspen ?", "coarse_label": 5, "fine_label": 40},
        {"label": "number"},
    ),
    "subj": (
        {"text": "the movie is a gem .", "label": 0, "label_text": "subjective"},
        {"label": "subjective"},
    ),
    "rte": (
        {
            "premise": "Dana Reeve died.",
            "hypothesis": "Reeve had an accident.",
            "idx": 0,
            "label": 1,
        },
        {"label": "not_entailment"},
    ),
    "cb": (
        {
            "premise": "Do we assume there is a shipment?",
            "hypothesis": "there is a shipment",
            "idx": 1,
            "label": 2,
        },
        {"label": "neutral"},
    ),
    "mrpc": (
        {"sentence1": "He said hi.", "sentence2": "He greeted them.", "label": 1, "idx": 0},
        {"passage": "He said hi.", "text": "He greeted them.", "label": "yes"},
    ),
    "dbpedia": (
        {"label": 13, "title": "The April Witch", "content": "The April Witch is a short story."},
        {"text": "The April Witch: The April Witch is a short story.", "label": "written work"},
    ),
    "tweet_eval_emotion": ({"text": "#Deppression is real.", "label": 3}, {"label": "sadness"}),
    "tweet_eval_hate": ({"text": "you are correct", "label": 0}, {"label": "not-hate"}),
    "tweeteval_senti_eng": ({"text": "Survey shows support", "label": 1}, {"label": "neutral"}),
    "sib200_swh": (
        {"index_id": 993, "category": "science/technology", "text": "Hata hivyo, vina urembo."},
        {"id": "sib200_swh-993", "label": "science"},
    ),
    "sib200_eng": (
        {"index_id": 1, "category": "travel", "text": "Pack light."},
        {"id": "sib200_eng-1", "label": "travel"},
    ),
    "nusax_senti_jav": (
        {"id": "209", "text": "Rotine enak lan regane uga mirah.", "lang": "jav", "label": 2},
        {"id": "nusax_senti_jav-209", "label": "positive"},
    ),
}


def _with_id(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": "x-0", **row} if "id" not in row else row


def test_every_registered_task_has_a_sample() -> None:
    assert set(REGISTRY) <= set(SAMPLES), sorted(set(REGISTRY) - set(SAMPLES))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_convert_row_gives_valid_rows(name: str) -> None:
    spec = resolve_task(name)
    hub_row, expected = SAMPLES[name]
    before = copy.deepcopy(hub_row)
    out = spec.convert_row(hub_row)
    assert hub_row == before, "convert_row must not mutate its input"
    assert spec.convert_row(hub_row) == out, "convert_row must be deterministic"
    for key, value in expected.items():
        assert out[key] == value, key
    validate_row(_with_id(out), spec.meta_core())
    json.loads(json.dumps(out))  # JSON-serialisable
    # Field order follows shared/data: [id], [passage], text|question, [options], label.
    assert list(out)[-1] == "label"


def test_sciq_places_the_answer_deterministically() -> None:
    spec = resolve_task("sciq")
    hub_row, _ = SAMPLES["sciq"]
    out = spec.convert_row(hub_row)
    assert out["options"][out["label"]] == hub_row["correct_answer"]
    assert out["label"] == fetch.sciq_answer_position(hub_row["question"])
    assert sorted(out["options"]) == sorted(
        [
            hub_row["correct_answer"],
            hub_row["distractor1"],
            hub_row["distractor2"],
            hub_row["distractor3"],
        ]
    )
    positions = {fetch.sciq_answer_position(f"question {i}") for i in range(50)}
    assert positions == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("name", "change", "error"),
    [
        ("sst2", {"label": -1}, LabelError),
        ("sst2", {"text": "   "}, ConversionError),
        ("mnli", {"label": -1}, LabelError),
        ("ag_news", {"label": 4}, LabelError),
        ("boolq", {"answer": "yes"}, ConversionError),
        ("arc_easy", {"answerKey": "E"}, LabelError),
        ("commonsense_qa", {"answerKey": ""}, LabelError),
        ("medmcqa", {"cop": -1}, LabelError),
        ("social_iqa", {"label": "4"}, LabelError),
        ("social_iqa", {"label": ""}, LabelError),
        ("race", {"answer": "E"}, LabelError),
        ("financial_phrasebank", {"label": True}, ConversionError),
        ("sib200_swh", {"category": "cooking"}, LabelError),
        ("subj", {"label_text": "neutral"}, LabelError),
    ],
)
def test_bad_rows_raise(name: str, change: dict[str, Any], error: type[Exception]) -> None:
    spec = resolve_task(name)
    row = {**SAMPLES[name][0], **change}
    with pytest.raises(error):
        spec.convert_row(row)


def test_missing_fields_raise_key_error() -> None:
    with pytest.raises(KeyError):
        resolve_task("sst2").convert_row({"label": 1})
    with pytest.raises(KeyError):
        resolve_task("medmcqa").convert_row({"question": "q", "cop": 1})


def test_filtered_rows_raise_skiprow() -> None:
    arc = dict(SAMPLES["arc_easy"][0])
    arc["choices"] = {"text": FOUR + ["a fifth"], "label": ["A", "B", "C", "D", "E"]}
    with pytest.raises(SkipRow, match="4 options"):
        resolve_task("arc_easy").convert_row(arc)
    race = {**SAMPLES["race"][0], "article": "x" * (fetch.RACE_MAX_PASSAGE_CHARS + 1)}
    with pytest.raises(SkipRow, match="passage"):
        resolve_task("race").convert_row(race)


def test_validate_row_rejects_bad_rows() -> None:
    cls = resolve_task("sst2").meta_core()
    mc = resolve_task("arc_easy").meta_core()
    validate_row({"id": "a", "text": "t", "label": "negative"}, cls)
    bad_cls: list[dict[str, Any]] = [
        {"text": "t", "label": "negative"},
        {"id": "", "text": "t", "label": "negative"},
        {"id": "a", "text": "", "label": "negative"},
        {"id": "a", "text": "t", "label": "neutral"},
        {"id": "a", "text": "t", "label": 0},
    ]
    for row in bad_cls:
        with pytest.raises(ValueError):
            validate_row(row, cls)
    good_mc: dict[str, Any] = {
        "id": "a",
        "question": "q",
        "options": ["1", "2", "3", "4"],
        "label": 3,
    }
    validate_row(good_mc, mc)
    changes: list[dict[str, Any]] = [
        {"label": 4},
        {"label": -1},
        {"label": "A"},
        {"label": True},
        {"options": ["1", "2", "3", "4", "5"]},  # more options than letters
        {"options": ["1"]},
        {"options": ["1", "2", "", "4"]},
        {"question": None},
    ]
    for change in changes:
        with pytest.raises(ValueError):
            validate_row({**good_mc, **change}, mc)
    with pytest.raises(LabelError):
        validate_row({"id": "a", "text": "t", "label": "neutral"}, cls)


def test_validate_row_is_the_loaders_validator() -> None:
    from castlib.tasks import TaskFormatError, parse_row

    meta = resolve_task("arc_easy").meta_core()
    good = {"id": "a", "question": "q", "options": ["1", "2", "3", "4"], "label": 1}
    assert parse_row(good, meta).options == ("1", "2", "3", "4")
    for change in ({"id": 7}, {"options": ["1", " "]}, {"paper_subset": "yes"}, {"label": 9}):
        row = {**good, **change}
        with pytest.raises(TaskFormatError) as loader:
            parse_row(row, meta)
        with pytest.raises(ValueError) as fetcher:
            validate_row(row, meta)
        assert str(fetcher.value) == str(loader.value)


# ------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------


def test_unknown_names_raise_listing_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may be loaded when a name is unknown")

    monkeypatch.setattr(download, "_load_split", no_loading)
    with pytest.raises(ValueError) as info:
        fetch_tasks(["sst2", "not_a_task"], "unused")
    message = str(info.value)
    assert "not_a_task" in message
    for name in ("sst2", "arc_easy", "medmcqa", "sib200_<lang>", "swh"):
        assert name in message
    with pytest.raises(ValueError, match="SIB-200"):
        resolve_task("sib200_xx")


def test_spec_and_paper_tasks_are_covered() -> None:
    for name in (
        "sst2",
        "ag_news",
        "boolq",
        "mnli",
        "arc_easy",
        "arc_challenge",
        "commonsense_qa",
        "race",
        "financial_phrasebank",
        "medmcqa",
        "sciq",
        "social_iqa",
    ):
        assert name in REGISTRY
        assert name in fetch.DEFAULT_TASKS
    for lang in ("eng", "fra", "ind", "swh", "jav", "sun", "hau", "yor", "zho"):
        assert f"sib200_{lang}" in fetch.DEFAULT_TASKS


def test_sib200_family_resolves_language_codes() -> None:
    swh = resolve_task("sib200_swh")
    assert swh.config == "swh_Latn" and swh.language == "sw" and swh.role == "target"
    assert swh.train_cap == 200
    assert resolve_task("sib200_swh_Latn").name == "sib200_swh"
    eng = resolve_task("sib200_eng")
    assert eng.role == "source" and eng.train_cap is None
    other = resolve_task("sib200_tgl_Latn")
    assert other.name == "sib200_tgl" and other.config == "tgl_Latn"
    hant = resolve_task("sib200_zho_Hant")
    assert hant.name == "sib200_zho_hant" and hant.config == "zho_Hant"
    assert resolve_task("nusax_senti_jav").config == "jav"


SHARED_DATA = repo_data_dir()  # the data the repository ships


def test_specs_match_shared_data_meta() -> None:
    names = [*REGISTRY, *[p.name for p in SHARED_DATA.glob("sib200_*")]]
    names += [p.name for p in SHARED_DATA.glob("nusax_senti_*")]
    checked = 0
    for name in names:
        path = SHARED_DATA / name / "meta.json"
        if not path.is_file():
            continue
        shared = json.loads(path.read_text(encoding="utf-8"))
        spec = resolve_task(name)
        ours = fetch.build_meta(spec, {}, {}, commit=None, revision="main", seed=0)
        for key in ("name", "kind", "language", "labels", "instruction", "fields", "role"):
            assert ours[key] == shared[key], (name, key)
        if "field_roles" in shared:
            assert ours["field_roles"] == shared["field_roles"], name
        for key in ("family", "language_name", "resource_level", "parallel", "label_map"):
            if key in shared:
                assert ours[key] == shared[key], (name, key)
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------------------------------
# A full fetch against an in-memory fake hub
# ------------------------------------------------------------------------------------------

SIB_CATEGORIES = ["science/technology", "travel", "politics", "sports", "health", "geography"]


def _fake_rows(spec: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Hub-shaped rows, including a few broken ones the fetch must skip and count."""
    name = spec.name
    if name == "sst2":
        n = {"train": 300, "test": 150, "validation": 40}[split]
        rows: list[dict[str, Any]] = [
            {"text": f"{split} review number {i} .", "label": i % 2} for i in range(n)
        ]
        rows[3]["label"] = -1  # unlabelled row: label outside the space
        rows[4]["text"] = ""  # broken row
        if split == "train":
            rows[5]["text"] = "test review number 0 ."  # repeats a test input
        return rows
    if name == "financial_phrasebank":
        return [{"sentence": f"Profit changed by {i} % .", "label": i % 3} for i in range(400)]
    if name == "arc_easy":
        n = {"train": 120, "test": 90, "validation": 30}[split]
        rows = []
        for i in range(n):
            k = 5 if i % 10 == 0 else 4
            rows.append(
                {
                    "id": f"{split}_{i}",
                    "question": f"{split} question {i}?",
                    "choices": {
                        "text": [f"option {j}" for j in range(k)],
                        "label": [str(j + 1) for j in range(k)],
                    },
                    "answerKey": str(i % 4 + 1),
                }
            )
        return rows
    if name.startswith("sib200_"):
        n = {"train": 120, "test": 40, "validation": 20}[split]
        offset = {"train": 0, "validation": 1000, "test": 2000}[split]
        rows = [
            {
                "index_id": offset + i,
                "category": SIB_CATEGORIES[i % len(SIB_CATEGORIES)],
                "text": f"{spec.config} sentence {offset + i}",
            }
            for i in range(n)
        ]
        if spec.config == "fra_Latn":  # a different hub row order must not change the picks
            rows.reverse()
        return rows
    raise AssertionError(f"no fake rows for {name}")


class FakeHub:
    def __init__(self, script_based: Sequence[str] = ()) -> None:
        self.calls: list[tuple[str, str, str | None, bool]] = []
        self.script_based = set(script_based)

    def load(
        self, spec: TaskSpec, split: str, revision: str | None = None, parquet_export: bool = False
    ) -> list[dict[str, Any]]:
        self.calls.append((spec.name, split, revision, parquet_export))
        if spec.name in self.script_based and not parquet_export:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {spec.name}.py")
        return _fake_rows(spec, split)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(download, "_load_split", fake.load)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: f"sha-{revision}")
    return fake


def _read_task(folder: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    rows = {}
    for split in ("train", "test", "dev"):
        path = folder / f"{split}.jsonl"
        if path.exists():
            rows[split] = [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            ]
    return meta, rows


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


TASKS = ["sst2", "financial_phrasebank", "arc_easy", "sib200_swh"]


def test_fetch_writes_valid_capped_files(hub: FakeHub, tmp_path: Path) -> None:
    paths = fetch_tasks(TASKS, tmp_path, max_train=50, max_test=30)
    assert paths == [tmp_path / name for name in TASKS]
    for name, folder in zip(TASKS, paths, strict=True):
        meta, rows = _read_task(folder)
        spec = resolve_task(name)
        assert META_KEYS <= set(meta)
        assert meta["name"] == name
        assert set(meta["source"]) == {"repo", "commit", "paths", "url"}
        assert meta["source"]["repo"] == spec.hub_id
        assert meta["counts"] == {s: len(rows.get(s, [])) for s in ("train", "test", "dev")}
        assert ("dev" in rows) == ("dev" in spec.splits)
        assert len(rows["train"]) <= min(50, spec.train_cap or 50)
        assert 0 < len(rows["test"]) <= 30
        assert len(rows.get("dev", [])) <= 30
        ids = [r["id"] for split_rows in rows.values() for r in split_rows]
        assert len(ids) == len(set(ids)), "ids must be unique within a task"
        keys = {
            split: {json.dumps([r.get(f) for f in meta["fields"]] + [r.get("options")]) for r in rs}
            for split, rs in rows.items()
        }
        assert not keys["train"] & keys["test"], "train and test must not share inputs"
        for split_rows in rows.values():
            for row in split_rows:
                validate_row(row, meta)
                assert json.loads(json.dumps(row, ensure_ascii=False)) == row
        assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))

    sst2, sst2_rows = _read_task(tmp_path / "sst2")
    assert len(sst2_rows["train"]) == 50 and len(sst2_rows["test"]) == 30
    assert len(sst2_rows["dev"]) == 30  # 40 hub rows, 2 broken, cap 30
    assert "skipped" in sst2["notes"] and "sha-main" in sst2["notes"]
    assert sst2["source"]["commit"] == "sha-main"
    # rows are written in hub order
    train_idx = [int(r["text"].split()[3]) for r in sst2_rows["train"]]
    assert train_idx == sorted(train_idx)

    fpb, fpb_rows = _read_task(tmp_path / "financial_phrasebank")
    assert fpb["role"] == "target" and fpb["counts"] == {"train": 50, "test": 30, "dev": 0}
    assert fpb["source"]["commit"] == f"sha-{fetch.PARQUET_REVISION}"

    arc, arc_rows = _read_task(tmp_path / "arc_easy")
    assert all(len(r["options"]) == 4 for rs in arc_rows.values() for r in rs)

    sib, _ = _read_task(tmp_path / "sib200_swh")
    assert sib["family"] == "sib200" and sib["flores_code"] == "swh_Latn"
    assert sib["counts"] == {"train": 50, "test": 30, "dev": 20}


def test_skipped_rows_are_counted(hub: FakeHub, tmp_path: Path) -> None:
    fetch_tasks(["sst2", "arc_easy"], tmp_path, max_train=1000, max_test=1000)
    sst2, rows = _read_task(tmp_path / "sst2")
    notes = sst2["notes"]
    assert "1 label outside the label space" in notes
    assert "1 conversion failed" in notes
    assert "1 duplicate input" in notes
    assert len(rows["train"]) == 300 - 3 and len(rows["test"]) == 150 - 2
    arc, arc_rows = _read_task(tmp_path / "arc_easy")
    assert "filtered: not 4 options" in arc["notes"]
    assert len(arc_rows["train"]) == 120 - 12


def test_fetch_is_deterministic(hub: FakeHub, tmp_path: Path) -> None:
    fetch_tasks(TASKS, tmp_path / "a", max_train=50, max_test=30)
    fetch_tasks(TASKS, tmp_path / "b", max_train=50, max_test=30)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    fetch_tasks(["sst2"], tmp_path / "c", max_train=50, max_test=30, seed=1)
    _, seed0 = _read_task(tmp_path / "a" / "sst2")
    _, seed1 = _read_task(tmp_path / "c" / "sst2")
    assert [r["id"] for r in seed0["train"]] != [r["id"] for r in seed1["train"]]


def test_parallel_family_picks_the_same_items(hub: FakeHub, tmp_path: Path) -> None:
    fetch_tasks(["sib200_swh", "sib200_fra"], tmp_path, max_train=50, max_test=30)
    _, swh = _read_task(tmp_path / "sib200_swh")
    _, fra = _read_task(tmp_path / "sib200_fra")
    for split in ("train", "test", "dev"):
        swh_ids = [r["id"].split("-")[-1] for r in swh[split]]
        fra_ids = sorted(r["id"].split("-")[-1] for r in fra[split])
        assert sorted(swh_ids) == fra_ids, split


def test_existing_tasks_are_kept_unless_overwrite(hub: FakeHub, tmp_path: Path) -> None:
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10)
    meta_path = tmp_path / "sst2" / "meta.json"
    meta_path.write_text('{"edited": true}\n', encoding="utf-8")
    n_calls = len(hub.calls)
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10)
    assert meta_path.read_text(encoding="utf-8") == '{"edited": true}\n'
    assert len(hub.calls) == n_calls
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10, overwrite=True)
    assert json.loads(meta_path.read_text(encoding="utf-8"))["name"] == "sst2"


def test_partial_fetch_has_no_meta(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(download, "build_meta", broken)
    with pytest.raises(OSError):
        fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10, overwrite=True)
    folder = tmp_path / "sst2"
    assert (folder / "train.jsonl").exists()
    assert not (folder / "meta.json").exists(), "an interrupted fetch must not leave meta.json"
    # a partial folder is refetched even without overwrite
    monkeypatch.undo()
    _hub_reachable(monkeypatch)
    monkeypatch.setattr(download, "_load_split", hub.load)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: "sha")
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10)
    assert (folder / "meta.json").exists()


def test_script_datasets_fall_back_to_the_parquet_export(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeHub(script_based=["sst2"])
    monkeypatch.setattr(download, "_load_split", fake.load)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: f"sha-{revision}")
    fetch_tasks(["sst2"], tmp_path, max_train=20, max_test=10)
    meta, _ = _read_task(tmp_path / "sst2")
    assert meta["source"]["commit"] == f"sha-{fetch.PARQUET_REVISION}"
    assert fetch.PARQUET_REVISION in meta["notes"]
    assert fake.calls[-1][3] is True


def test_missing_datasets_library_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: None)
    with pytest.raises(ImportError, match=r"castlib\[fetch\]"):
        fetch_tasks(["sst2"], tmp_path)
    assert not (tmp_path / "sst2").exists()


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_main_fetches_and_reports(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sst2", "arc_easy", "--data-dir", str(tmp_path), "--max-train", "12", "--max-test", "6"]
    assert fetch.main(argv) == 0
    meta, rows = _read_task(tmp_path / "arc_easy")
    assert meta["counts"]["train"] == 12 and len(rows["test"]) == 6
    assert str(tmp_path / "sst2") in capsys.readouterr().out

    assert fetch.main(["no_such_task", "--data-dir", str(tmp_path)]) == 2
    assert "Known tasks" in capsys.readouterr().err

    assert fetch.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "sst2" in listed and "sib200_swh" in listed

    with pytest.raises(SystemExit):
        fetch.main(["sst2"])  # --data-dir is required


def test_main_reports_failures_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def flaky(
        spec: TaskSpec, split: str, revision: str | None = None, parquet_export: bool = False
    ) -> Sequence[Mapping[str, Any]]:
        if spec.name == "sst2":
            raise ConnectionError("hub unreachable")
        return _fake_rows(spec, split)

    monkeypatch.setattr(download, "_load_split", flaky)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: None)
    assert fetch.main(["sst2", "arc_easy", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "sst2" in err and "hub unreachable" in err
    assert (tmp_path / "arc_easy" / "meta.json").exists()
    assert not (tmp_path / "sst2").exists()


def test_load_split_uses_datasets_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loader against a stand-in ``datasets`` module: main first, Parquet export next."""
    import sys
    import types

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    failure: dict[str, Exception] = {}

    def load_dataset(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((args, kwargs))
        if "data_dir" not in kwargs:
            raise failure["main"]
        return _fake_rows(REGISTRY["sst2"], kwargs["split"])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setattr(download, "_resolve_commit", lambda hub_id, revision: f"sha-{revision}")

    sib = resolve_task("sib200_swh")
    download._load_split(sib, "train", revision="abc", parquet_export=True)
    assert calls[-1] == (
        ("Davlan/sib200",),
        {"data_dir": "swh_Latn", "split": "train", "revision": "abc"},
    )

    sst2 = REGISTRY["sst2"]
    failure["main"] = RuntimeError("Dataset scripts are no longer supported, but found sst2.py")
    calls.clear()
    loaded, commit, revision = download._load_all(sst2)
    assert revision == fetch.PARQUET_REVISION and commit == f"sha-{fetch.PARQUET_REVISION}"
    assert set(loaded) == {"train", "test", "validation"}
    assert calls[0] == (("SetFit/sst2", None), {"split": "train", "revision": "sha-main"})
    assert calls[1][1] == {
        "data_dir": "default",
        "split": "train",
        "revision": f"sha-{fetch.PARQUET_REVISION}",
    }

    failure["main"] = ConnectionError("hub unreachable")  # not a script problem: no fallback
    calls.clear()
    with pytest.raises(ConnectionError):
        download._load_all(sst2)
    assert len(calls) == 1


def test_fetched_folders_load_with_castlib_tasks(hub: FakeHub, tmp_path: Path) -> None:
    tasks = pytest.importorskip("castlib.tasks")
    fetch_tasks(TASKS, tmp_path, max_train=20, max_test=10)
    for name in TASKS:
        task = tasks.load_task(name, data_dir=tmp_path)
        _, rows = _read_task(tmp_path / name)
        assert len(task.test) == len(rows["test"]) and len(task.train) == len(rows["train"])


def test_validate_row_accepts_the_shared_data() -> None:
    checked = 0
    for meta_path in sorted(SHARED_DATA.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for split in ("train", "test", "dev"):
            path = split_file(meta_path.parent, split)
            if path is not None:
                for line in _read_lines(path)[:50]:
                    validate_row(json.loads(line), meta)
                    checked += 1
    assert checked > 1000
