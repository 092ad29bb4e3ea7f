import gzip
import json

import pytest

from castlib.prompts import (
    CrossTask,
    FewShot,
    cross_task,
    input_block,
    k_shot,
    zero_shot,
)
from castlib.tasks import (
    Example,
    TaskFormatError,
    list_tasks,
    load_task,
    repo_data_dir,
    resolve_data_dir,
    sample_examples,
)
from tests.conftest import write_task

CLS_META = {
    "kind": "classification",
    "labels": ["negative", "positive"],
    "instruction": "Classify the sentiment.",
    "fields": ["text"],
}
MC_META = {
    "kind": "multiple_choice",
    "labels": ["A", "B", "C", "D"],
    "instruction": "Answer the question.",
    "fields": ["passage", "question"],
    "field_roles": {"passage": "context", "question": "question"},
}


@pytest.fixture()
def data(tmp_path):
    write_task(
        tmp_path,
        "cls",
        CLS_META,
        {
            "train": [{"id": "t0", "text": "good", "label": "positive"}],
            "test": [{"id": "e0", "text": "bad", "label": "negative"}],
        },
    )
    write_task(
        tmp_path,
        "mc",
        MC_META,
        {
            "train": [
                {
                    "id": "m0",
                    "passage": "P.",
                    "question": "Q?",
                    "options": ["x", "y", "z"],
                    "label": 2,
                }
            ],
            "test": [
                {"id": "m1", "passage": "R.", "question": "S?", "options": ["u", "v"], "label": 0}
            ],
        },
    )
    return tmp_path


def test_load_and_label_space(data):
    cls, mc = load_task("cls", data), load_task("mc", data)
    assert cls.test[0].label == 0 and cls.answer(cls.test[0]) == "negative"
    assert mc.train[0].label == 2 and mc.answer(mc.train[0]) == "C"
    assert mc.label_space(mc.test[0]) == ("A", "B")
    assert list_tasks(data) == ["cls", "mc"]


def test_data_dir_from_env(data, monkeypatch):
    monkeypatch.setenv("CASTLIB_DATA", str(data))
    assert resolve_data_dir() == data
    assert load_task("cls").name == "cls"


def test_unknown_task_lists_available(data):
    with pytest.raises(KeyError, match="Available: cls, mc"):
        load_task("nope", data)


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"id": "x", "text": "a", "label": "maybe"}', "not in"),
        ('{"id": "x", "label": "positive"}', "field 'text'"),
        ("{not json", "invalid JSON"),
    ],
)
def test_malformed_row_names_file_and_line(data, row, message):
    path = data / "cls" / "test.jsonl"
    path.write_text('{"id": "ok", "text": "fine", "label": "positive"}\n' + row + "\n")
    with pytest.raises(TaskFormatError, match=rf"test\.jsonl:2: .*{message}"):
        load_task("cls", data)


def test_prompt_formats(data):
    cls, mc = load_task("cls", data), load_task("mc", data)
    assert zero_shot(cls, cls.test[0]) == "Classify the sentiment.\n\nText: bad\nAnswer:"
    assert input_block(mc, mc.train[0]) == "Context: P.\nQuestion: Q?\nA. x\nB. y\nC. z"
    assert k_shot(cls, cls.test[0], cls.train) == (
        "Classify the sentiment.\n\nText: good\nAnswer: positive\n\nText: bad\nAnswer:"
    )
    assert cross_task(mc, mc.train, cls, cls.test[0]) == (
        "Answer the question.\n\nContext: P.\nQuestion: Q?\nA. x\nB. y\nC. z\nAnswer: C\n\n"
        "Classify the sentiment.\n\nText: bad\nAnswer:"
    )
    assert FewShot(tuple(cls.train))(cls, cls.test[0]) == k_shot(cls, cls.test[0], cls.train)
    assert CrossTask(mc, tuple(mc.train))(cls, cls.test[0]) == cross_task(
        mc, mc.train, cls, cls.test[0]
    )


def test_every_shared_task_loads(repo_data):
    names = list_tasks(repo_data)
    assert "sst2" in names and len(names) > 10
    for name in names:
        task = load_task(name, repo_data)
        assert len(task.test) > 0
        assert zero_shot(task, task.test[0]).endswith("Answer:")


def test_chat_template_wraps_any_builder(data):
    from castlib.prompts import ChatTemplate
    from castlib.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    cls = load_task("cls", data)
    text = ChatTemplate(zero_shot, tok)(cls, cls.test[0])
    assert text == "<user>Classify the sentiment.\n\nText: bad</s><assistant>Answer:"


def test_paper_subset_flag(data):
    path = data / "cls" / "test.jsonl"
    path.write_text(
        '{"id": "a", "text": "x", "label": "positive", "paper_subset": true}\n'
        '{"id": "b", "text": "y", "label": "negative"}\n'
    )
    task = load_task("cls", data)
    assert [ex.paper_subset for ex in task.test] == [True, False]
    path.write_text('{"id": "a", "text": "x", "label": "positive", "paper_subset": "yes"}\n')
    with pytest.raises(TaskFormatError, match="paper_subset"):
        load_task("cls", data)


def test_sample_examples_is_seeded_uniform_and_without_repeats():
    rows = [Example(id=str(i), fields={"text": "t"}, label=i % 2) for i in range(50)]
    a, b = sample_examples(rows, 10, seed=3), sample_examples(rows, 10, seed=3)
    assert a == b and len({ex.id for ex in a}) == 10
    assert a != sample_examples(rows, 10, seed=4)
    assert a != rows[:10]  # not the first rows
    assert sample_examples(rows, None) == rows == sample_examples(rows, 500)
    with pytest.raises(ValueError, match=">= 1"):
        sample_examples(rows, 0)


def test_label_sorted_split_first_rows_vs_sample(repo_data):
    """financial_phrasebank's test file is sorted by label: its first 200 rows are mostly one
    label, a seeded sample is not (why evaluation takes ``sample=``)."""
    from collections import Counter

    task = load_task("financial_phrasebank", repo_data)

    def distance(rows):  # total variation distance to the whole split's label distribution
        counts, overall = Counter(ex.label for ex in rows), Counter(ex.label for ex in task.test)
        return 0.5 * sum(abs(counts[k] / len(rows) - overall[k] / len(task.test)) for k in overall)

    assert distance(task.test[:200]) > 0.3
    assert distance(sample_examples(task.test, 200, seed=0)) < 0.1


def _gzip_split(folder, split):
    """Replace ``<split>.jsonl`` by ``<split>.jsonl.gz`` (as the shipped data folder has them)."""
    plain = folder / f"{split}.jsonl"
    (folder / f"{split}.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()


def test_gzip_split_reads_the_same_rows(data):
    before = load_task("cls", data)
    _gzip_split(data / "cls", "train")
    after = load_task("cls", data)
    assert after.train == before.train and after.test == before.test


def test_truncated_gzip_is_refused_naming_the_file(data):
    _gzip_split(data / "cls", "train")
    path = data / "cls" / "train.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(TaskFormatError, match=r"train\.jsonl\.gz: unreadable"):
        load_task("cls", data)


def test_plain_and_gzip_split_together_are_refused(data):
    folder = data / "cls"
    (folder / "train.jsonl.gz").write_bytes(gzip.compress((folder / "train.jsonl").read_bytes()))
    with pytest.raises(TaskFormatError, match=r"both train\.jsonl and train\.jsonl\.gz"):
        load_task("cls", data)


def test_missing_split_file_named_by_meta_counts(data):
    meta_path = data / "cls" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"] = {"train": 2, "test": 1}
    meta_path.write_text(json.dumps(meta))
    (data / "cls" / "train.jsonl").unlink()
    with pytest.raises(TaskFormatError, match=r"missing train\.jsonl .*counts 2 train rows"):
        load_task("cls", data)


def test_missing_test_split_is_refused(data):
    (data / "cls" / "test.jsonl").unlink()
    with pytest.raises(TaskFormatError, match=r"cls: missing test\.jsonl"):
        load_task("cls", data)


def test_row_count_disagreeing_with_meta_is_refused(data):
    meta_path = data / "cls" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"] = {"train": 5}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TaskFormatError, match=r"train\.jsonl: 1 rows, but meta\.json counts 5"):
        load_task("cls", data)


def test_duplicate_row_id_is_refused(data):
    path = data / "cls" / "test.jsonl"
    row = '{"id": "d", "text": "fine", "label": "positive"}\n'
    path.write_text(row + row)
    with pytest.raises(
        TaskFormatError, match=r"test\.jsonl:2: duplicate row id 'd' \(first on line 1\)"
    ):
        load_task("cls", data)


def test_close_task_name_gets_a_suggestion(repo_data):
    with pytest.raises(KeyError, match=r"unknown task 'sst-2'.*Did you mean 'sst2'"):
        load_task("sst-2", repo_data)


def test_data_dir_is_found_relative_to_the_package_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("CASTLIB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no data/ here
    assert resolve_data_dir() == repo_data_dir()
    assert load_task("sst2").name == "sst2"


def test_missing_env_data_dir_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("CASTLIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere \(\$CASTLIB_DATA\) does not exist"):
        resolve_data_dir()


def test_no_data_anywhere_names_what_was_tried(tmp_path, monkeypatch):
    import castlib.tasks as tasks_module

    monkeypatch.delenv("CASTLIB_DATA", raising=False)
    monkeypatch.setattr(tasks_module, "repo_data_dir", lambda: tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=r"CASTLIB_DATA \(not set\).*castlib data fetch"):
        resolve_data_dir()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("labels", "ny", "'labels' must be a list"),
        ("labels", [0, 1], "'labels' must be a list"),
        ("fields", "text", "'fields' must be a non-empty list"),
        ("instruction", 3, "'instruction' must be a non-empty string"),
        ("field_roles", ["x"], "'field_roles' must map"),
    ],
)
def test_meta_of_the_wrong_type_is_refused(data, key, value, message):
    meta_path = data / "cls" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta[key] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TaskFormatError, match=rf"meta\.json: {message}"):
        load_task("cls", data)
