"""Bad input is refused at the call that got it, with a message naming the culprit; records say
what ran (issue 24). Tiny random models only; nothing here reaches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import castlib.methods as methods
from castlib.hub import HubUnreachableError, unreachable_reason
from castlib.methods.tuning import tuning_set
from castlib.record import record_activations
from castlib.scoring import evaluate, score_prompts, select_examples
from castlib.steer import steer
from castlib.tasks import TaskFormatError, load_task
from castlib.testing import FAMILIES, tiny_model
from castlib.vectors import SteeringVector
from tests.conftest import make_task, write_task

REPO = Path(__file__).resolve().parent.parent
FAST = {"batch_size": 8, "n_tune": 4, "alphas": (1.0,), "layers": (1,)}
CAST = {**FAST, "m": 4, "k": 2, "n_candidates": 12, "n_queries": 4, "graph_k": 3}


def vector_of(lm, model_id=None, layers=(1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        layers={la: torch.randn(lm.hidden_size, generator=g) for la in layers},
        model_id=lm.name if model_id is None else model_id,
        hidden_size=lm.hidden_size,
        n_layers=lm.n_layers,
    )


# ---------------------------------------------------------------------------------- steering


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_steer_refuses_non_finite_alpha(lm, alpha):
    with pytest.raises(ValueError, match=r"alpha must be a finite number, got (nan|inf|-inf)"):
        steer(lm, vector_of(lm), alpha=alpha)
    assert not any(b._forward_hooks for b in lm.blocks)


@pytest.mark.parametrize("name", ["cast", "task_vector", "icv", "function_vector"])
def test_tuning_grids_refuse_non_finite_alphas(name):
    with pytest.raises(ValueError, match=rf"{name}: alphas\[1\] must be a finite number, got nan"):
        methods.get(name)(alphas=(1.0, float("nan")))
    with pytest.raises(ValueError, match="alphas.*inf"):
        methods.get(name)(alphas=[float("inf")])


def test_vector_of_another_model_is_refused_with_both_ids(lm):
    v = vector_of(lm, model_id="org/other-model")
    with pytest.raises(ValueError, match=r"'org/other-model'.*'tiny-llama'"):
        steer(lm, v)
    assert not any(b._forward_hooks for b in lm.blocks)


def test_arithmetic_across_models_is_refused(lm):
    a, b = vector_of(lm), vector_of(lm, model_id="org/other-model")
    for op in (lambda: a + b, lambda: a - b, lambda: b + a):
        with pytest.raises(ValueError, match=r"'tiny-llama'.*'org/other-model'|'org/other"):
            op()


def test_from_tensor_refuses_duplicate_layers(lm):
    t = torch.randn(2, lm.hidden_size)
    with pytest.raises(ValueError, match=r"layers \[1\] repeated"):
        SteeringVector.from_tensor(t, model_id=lm.name, n_layers=lm.n_layers, layers=[1, 1])


def test_layers_must_be_ints(lm):
    with pytest.raises(TypeError, match="layers must be an int or a list of ints.*1.0"):
        steer(lm, torch.ones(lm.hidden_size), layers=1.0)
    with pytest.raises(TypeError, match="'1'"):
        record_activations(lm, ["a"], layers="1")
    with pytest.raises(TypeError, match="cast: layers must be .*1.0"):
        methods.get("cast")(layers=1.0)
    assert methods.get("cast")(layers=2).params.layers == (2,)  # one int is one layer


def test_icv_refuses_a_layer_grid_it_would_ignore():
    with pytest.raises(ValueError, match="icv steers every layer"):
        methods.get("icv")(layers=(1,))


# ------------------------------------------------------------------------------ prompts, batch


@pytest.mark.parametrize("bad", ["", "   ", "\n"])
def test_blank_prompt_is_refused(lm, bad):
    with pytest.raises(ValueError, match=r"prompts\[1\] is blank"):
        record_activations(lm, ["a", bad])
    with pytest.raises(ValueError, match=r"prompts\[1\] is blank"):
        score_prompts(lm, ["a", bad], ["yes", "no"])


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_longer_than_the_context_is_refused(family, tokenizer):
    lm = tiny_model(family, hidden=32, layers=2, tokenizer=tokenizer)
    limit = lm.context_length
    assert isinstance(limit, int)
    long = "a" * limit  # one token per character, plus BOS
    with pytest.raises(ValueError, match=rf"prompt 1 is {limit + 1} tokens.*\({limit} tokens\)"):
        record_activations(lm, ["short", long])
    with pytest.raises(ValueError, match=rf"{limit} tokens\)"):
        score_prompts(lm, ["a" * (limit - 1)], ["yes", "no"])  # fits, but not with the answer


def test_batch_size_zero_is_refused(lm, toy_task):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        record_activations(lm, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        evaluate(lm, toy_task, batch_size=0)
    with pytest.raises(ValueError, match="cast: batch_size must be an int >= 1, got 0"):
        methods.get("cast")(batch_size=0)


def test_score_prompts_refuses_empty_answers(lm):
    with pytest.raises(ValueError, match="answers is empty"):
        score_prompts(lm, ["a"], [])
    with pytest.raises(TypeError, match="answers must be a list"):
        score_prompts(lm, ["a"], "yes")


@pytest.mark.parametrize("limit", [2.5, 0, -1, True, "3"])
def test_limit_must_be_a_positive_int(lm, toy_task, limit):
    with pytest.raises((TypeError, ValueError), match=f"limit must be an int >= 1, got {limit!r}"):
        select_examples(toy_task, limit=limit)
    with pytest.raises((TypeError, ValueError), match="limit must be an int >= 1"):
        evaluate(lm, toy_task, limit=limit)


def test_evaluate_accepts_a_task_name_and_refuses_other_types(lm, tmp_path, monkeypatch):
    task = make_task("named", n_train=2, n_test=3)
    rows = [
        {"id": ex.id, "text": ex.fields["text"], "label": task.labels[ex.label]} for ex in task.test
    ]
    meta = {
        "kind": "classification",
        "labels": list(task.labels),
        "instruction": "x",
        "fields": ["text"],
    }
    write_task(tmp_path, "named", meta, {"test": rows})
    monkeypatch.setenv("CASTLIB_DATA", str(tmp_path))
    assert evaluate(lm, "named").n == 3
    with pytest.raises(TypeError, match="task must be a Task or a task name, got int"):
        evaluate(lm, 3)


def test_nan_log_probs_are_refused_not_scored(lm, toy_task):
    with torch.no_grad():
        w = lm.model.lm_head.weight
        saved = w.clone()
        w.fill_(float("nan"))
    try:
        with pytest.raises(FloatingPointError, match=r"NaN log-probabilities on toy/test"):
            evaluate(lm, toy_task, limit=2)
    finally:
        with torch.no_grad():
            w.copy_(saved)


# -------------------------------------------------------------------------------- task files


def test_duplicate_row_ids_are_refused_naming_file_and_id(tmp_path):
    meta = {
        "kind": "classification",
        "labels": ["no", "yes"],
        "instruction": "x",
        "fields": ["text"],
    }
    rows = [{"id": "r1", "text": "a", "label": "no"}, {"id": "r1", "text": "b", "label": "yes"}]
    write_task(tmp_path, "dup", meta, {"test": rows})
    with pytest.raises(TaskFormatError, match=r"dup/test\.jsonl:2: duplicate row id 'r1'"):
        load_task("dup", tmp_path)


# ---------------------------------------------------------------------------------- records


def test_cast_k0_is_refused_before_any_extraction():
    with pytest.raises(ValueError, match="k=0 with contrast='mean'.*exactly zero"):
        methods.get("cast")(k=0)
    with pytest.raises(ValueError, match="k=0 with contrast='pca'"):
        methods.get("cast")(k=0, contrast="pca")
    methods.get("cast")(k=0, contrast="fewshot_only")  # patches h(P0): not a zero vector


def test_zero_vector_is_recorded(lm):
    src, tgt = make_task("src", 40, 4, seed=1), make_task("tgt", 12, 6, seed=2)
    m = methods.get("task_vector")(**FAST, k=1, n_prompts=2)
    m.fit(lm, [src], tgt)
    m.vector = SteeringVector(
        {la: torch.zeros(lm.hidden_size) for la in range(lm.n_layers)},
        lm.name,
        lm.hidden_size,
        lm.n_layers,
    )
    with pytest.warns(UserWarning, match="exactly zero"):
        m.record_vector_norm(lm)
    assert m.evaluate(lm, tgt, limit=2)["vector_norm"] == 0.0


def test_target_among_sources_is_recorded_as_using_target_labels(lm):
    tgt = make_task("tgt", 40, 6, seed=2)
    other = make_task("src", 40, 4, seed=1)
    m = methods.get("cast")(**CAST)
    with pytest.warns(UserWarning, match="target 'tgt' is among the sources"):
        m.fit(lm, [other, tgt], tgt)
    rec = m.evaluate(lm, tgt, limit=2)
    assert rec["uses_target_labels"] is True
    assert any(s.startswith("tgt:") for s in rec["selected_ids"])
    clean = methods.get("cast")(**CAST).fit(lm, [other], tgt).evaluate(lm, tgt, limit=2)
    assert clean["uses_target_labels"] is False
    zero = methods.get("zero_shot")().fit(lm, [tgt], tgt).evaluate(lm, tgt, limit=2)
    assert zero["uses_target_labels"] is False  # the sources are not read at all


def test_cast_small_source_clamps_n_candidates_and_records_it(lm):
    src, tgt = make_task("src", 20, 4, seed=1), make_task("tgt", 12, 6, seed=2)
    m = methods.get("cast")(**{**CAST, "n_candidates": 256})
    rec = m.fit(lm, [src], tgt).evaluate(lm, tgt, limit=2)
    assert rec["n_candidates_effective"] == {"src": 16}  # 20 train rows - 4 held out for tuning
    assert rec["tuning_n"] == 4 and rec["params"]["n_candidates"] == 256
    tiny = make_task("tiny", 5, 4, seed=3)
    with pytest.raises(ValueError, match="source task tiny has 5 train examples"):
        methods.get("cast")(**{**CAST, "m": 2, "n_tune": 4}).fit(lm, [tiny], tgt)


def test_too_small_tuning_source_is_named():
    src = make_task("src", 3, 2)
    with pytest.raises(ValueError, match=r"source task src has 3 train rows; 4 of the n_tune=4"):
        tuning_set("source", [src], src, 4, seed=0)


def test_method_fitted_on_another_model_is_refused(lm, tokenizer):
    src, tgt = make_task("src", 40, 4, seed=1), make_task("tgt", 12, 6, seed=2)
    m = methods.get("zero_shot")().fit(lm, [src], tgt)
    other = tiny_model("qwen2", hidden=32, layers=2, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"fitted on model 'tiny-llama'.*'tiny-qwen2'"):
        m.evaluate(other, tgt)


def test_bad_seed_and_task_types_are_refused(lm):
    tgt = make_task("tgt", 12, 6, seed=2)
    with pytest.raises(TypeError, match="seed must be an int, got 1.5"):
        methods.get("zero_shot")().fit(lm, [tgt], tgt, seed=1.5)
    with pytest.raises(TypeError, match="a task must be a Task or a task name, got 7"):
        methods.get("zero_shot")().fit(lm, [7], tgt)


# --------------------------------------------------------------------------- files on disk


def test_corrupt_vector_file_error_names_the_path(lm, tmp_path):
    path = vector_of(lm).save(tmp_path / "v.safetensors")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"v\.safetensors is not a readable safetensors file"):
        SteeringVector.load(path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        SteeringVector.load(tmp_path / "nope.safetensors")


def _raw_vector(path, tensors, meta):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"castlib": meta})
    return path


@pytest.mark.parametrize(
    "key, meta, match",
    [
        ("weird", None, "tensor 'weird' is not named layer.<index>"),
        ("layer.x", None, "tensor 'layer.x' is not named"),
        ("layer.1", "{not json", "metadata is not valid JSON"),
        ("layer.1", "[1, 2]", "must be an object"),
        ("layer.1", '{"model_id": "m", "hidden_size": "8", "n_layers": 4}', "hidden_size"),
        ("layer.1", '{"model_id": "m", "hidden_size": 8, "n_layers": 4, "extra": 1}', "extra"),
        ("layer.9", None, "layer 9 out of range"),
    ],
)
def test_odd_vector_files_name_the_path_and_the_problem(tmp_path, key, meta, match):
    meta = meta or json.dumps({"model_id": "m", "hidden_size": 8, "n_layers": 4})
    path = _raw_vector(tmp_path / "odd.safetensors", {key: torch.ones(8)}, meta)
    with pytest.raises(ValueError, match="odd.safetensors") as info:
        SteeringVector.load(path)
    assert match in str(info.value)


@pytest.fixture()
def saved_cast(lm, tmp_path):
    src, tgt = make_task("src", 40, 4, seed=1), make_task("tgt", 12, 6, seed=2)
    m = methods.get("task_vector")(**FAST, k=1, n_prompts=2).fit(lm, [src], tgt)
    return m.save(tmp_path / "saved")


def test_load_without_its_vector_fails_at_load(saved_cast):
    (saved_cast / "vector.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"saved/vector\.safetensors is missing"):
        methods.load(saved_cast)


def test_load_of_old_save_without_vector_key_still_needs_the_vector(saved_cast):
    doc = json.loads((saved_cast / "method.json").read_text())
    del doc["vector"]
    (saved_cast / "method.json").write_text(json.dumps(doc))
    (saved_cast / "vector.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="task_vector needs its steering vector"):
        methods.load(saved_cast)


def test_truncated_method_json_names_the_file(saved_cast):
    text = (saved_cast / "method.json").read_text()
    (saved_cast / "method.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"saved/method\.json is not valid JSON"):
        methods.load(saved_cast)


def test_method_json_without_info_names_file_and_key(saved_cast):
    doc = json.loads((saved_cast / "method.json").read_text())
    del doc["info"]
    (saved_cast / "method.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"method\.json: missing key\(s\) \['info'\]"):
        methods.load(saved_cast)


def test_method_json_with_unknown_method_or_folder_missing(saved_cast, tmp_path):
    doc = json.loads((saved_cast / "method.json").read_text())
    (saved_cast / "method.json").write_text(json.dumps({**doc, "method": "nope"}))
    with pytest.raises(ValueError, match=r"method\.json: unknown method 'nope'"):
        methods.load(saved_cast)
    with pytest.raises(FileNotFoundError, match="empty/method.json does not exist"):
        methods.load(tmp_path / "empty")


# ----------------------------------------------------------------------------- offline hub

CHILD = """
{body}
"""


def _run(body: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", CHILD.format(body=body)],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        cwd=REPO,
    )


OFFLINE_ENVS = [
    {"HF_HUB_OFFLINE": "1"},
    {"HF_ENDPOINT": "http://127.0.0.1:9"},  # a closed local port: no real network touched
]


@pytest.mark.parametrize("env", OFFLINE_ENVS, ids=["HF_HUB_OFFLINE", "closed-port"])
def test_unknown_model_fails_fast_saying_the_hub_is_unreachable(env):
    body = (
        "from castlib.models import load_model\n"
        "try:\n    load_model('nobody/no-such-model')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = _run(body, **env)
    assert "HubUnreachableError" in out.stdout and "'nobody/no-such-model'" in out.stdout
    assert "hub is unreachable" in out.stdout


@pytest.mark.parametrize("env", OFFLINE_ENVS, ids=["HF_HUB_OFFLINE", "closed-port"])
def test_data_fetch_fails_fast_saying_the_hub_is_unreachable(env, tmp_path):
    body = (
        "from castlib.repro.fetch import main\n"
        f"print('RC', main(['sst2', 'boolq', '--data-dir', {str(tmp_path)!r}]))\n"
    )
    out = _run(body, **env)
    assert "RC 1" in out.stdout
    assert "hub is unreachable" in out.stderr and "sst2, boolq" in out.stderr
    assert not any(tmp_path.iterdir())


def test_unreachable_hub_means_cache_only_loading_and_no_download(monkeypatch, tmp_path):
    """No wait on the hub (no timing asserted): transformers is asked for the local cache only
    (local_files_only=True, no retries), and data fetch never starts a download."""
    import transformers

    from castlib.models import load_model
    from castlib.repro import fetch

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []

    def fake_from_pretrained(source, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        raise OSError(f"{source} is not in the cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    with pytest.raises(HubUnreachableError, match="'org/model'.*127.0.0.1:9"):
        load_model("org/model", device="cpu")
    assert seen == [True]

    def no_download(spec):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fetch.download, "_load_all", no_download)
    assert fetch.main(["sst2", "--data-dir", str(tmp_path)]) == 1


def test_unreachable_reason_and_fetch_task_api(monkeypatch, tmp_path):
    from castlib.repro import fetch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in unreachable_reason()
    with pytest.raises(HubUnreachableError, match="cannot fetch sst2.*hub is unreachable"):
        fetch.fetch_task(fetch.resolve_task("sst2"), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert "127.0.0.1:9" in unreachable_reason(timeout=1.0)


def test_cross_task_icl_refuses_sources_smaller_than_k(lm):
    tiny, tgt = make_task("tiny", 2, 2, seed=3), make_task("tgt", 12, 6, seed=2)
    with pytest.raises(ValueError, match=r"source 'tiny' has 2 rows, fewer than k=4"):
        methods.get("cross_task_icl")(k=4).fit(lm, [tiny], tgt)
    with pytest.raises(ValueError, match=r"n_candidates \(2\) must be >= k \(4\)"):
        methods.get("cross_task_icl")(k=4, n_candidates=2, demo_choice="similar")


def test_layer_window_cut_at_the_last_block_is_recorded(lm):
    src, tgt = make_task("src", 40, 4, seed=1), make_task("tgt", 12, 6, seed=2)
    m = methods.get("task_vector")(**{**FAST, "layers": (3,)}, layer_window=3, k=1, n_prompts=2)
    rec = m.fit(lm, [src], tgt).evaluate(lm, tgt, limit=2)
    assert rec["layer"] == 3 and rec["steered_layers"] == [3]  # 4 blocks: 3..5 is cut to 3
