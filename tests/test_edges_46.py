"""Issue 46: caches and fast paths never answer for something else; every edge refused in words.

Each test names the case of the issue it checks. The store and the sweep are compared against
the uncached path (no store, full scoring) on the tiny models.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castlib import methods
from castlib.activation_store import ActivationStore, model_fingerprint
from castlib.record import record_activations
from castlib.scoring import evaluate, evaluate_sweep, result_from_scores, score_prompts
from castlib.steer import foreign_hooks, installed_hooks, steer
from castlib.tasks import Task, TaskFormatError, load_task, resolve_data_dir
from castlib.vectors import SteeringVector
from tests.conftest import make_task

PROMPTS = ["the movie was good", "bad film , not great", "the movie was good"]


def _plain(lm, prompts=PROMPTS, layers=(1, 3)):
    return record_activations(lm, prompts, layers=list(layers), store=None)


def _unstored(lm):
    """``lm`` without its own store: the uncached reference path."""
    return dataclasses.replace(lm, activation_store=None, interventions=[])


# ---------------------------------------------------------------- 1. the activation store


def test_store_inside_steer_records_the_steered_rows_and_never_serves_them_later(lm):
    store = ActivationStore()
    plain = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1))
    with steer(lm, v, alpha=4.0, layers=[0]):
        steered = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
        want = _plain(lm)  # the uncached steered rows
    assert torch.equal(steered, want)
    assert (steered - plain).abs().max() > 1.0  # steering changed them: the test can fail
    after = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
    torch.testing.assert_close(after, _plain(lm), atol=1e-5, rtol=0)


@pytest.mark.parametrize("where", ["submodule_hook", "block_pre_hook", "global_hook"])
def test_store_is_bypassed_while_anything_is_hooked(lm, where):
    store = ActivationStore()
    record_activations(lm, PROMPTS, layers=[2], store=store)  # unhooked rows in the store

    def shift(module, args, output):
        return output + 3.0 if isinstance(output, torch.Tensor) else output

    def pre(module, args):
        return (args[0] + 3.0, *args[1:])

    if where == "submodule_hook":
        handle = lm.blocks[1].mlp.register_forward_hook(shift)
    elif where == "block_pre_hook":
        handle = lm.blocks[1].register_forward_pre_hook(pre)
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, o: o if m is not lm.blocks[1].mlp else o + 3.0
        )
    try:
        assert installed_hooks(lm.model)
        hooked = record_activations(lm, PROMPTS, layers=[2], store=store)
        want = _plain(lm, layers=[2])
    finally:
        handle.remove()
    assert torch.equal(hooked, want)
    assert (hooked - _plain(lm, layers=[2])).abs().max() > 1.0


def test_same_weights_other_tokenizer_never_share_rows(lm):
    store = ActivationStore()
    with_bos = record_activations(lm, PROMPTS, layers=[2], store=store)
    tok = copy.deepcopy(lm.tokenizer)
    tok.add_bos_token = False
    assert tok(PROMPTS[0])["input_ids"] != lm.tokenizer(PROMPTS[0])["input_ids"]
    other = dataclasses.replace(lm, tokenizer=tok, interventions=[])
    without = record_activations(other, PROMPTS, layers=[2], store=store)
    want = record_activations(other, PROMPTS, layers=[2], store=None)
    torch.testing.assert_close(without, want, atol=1e-5, rtol=0)
    assert (without - with_bos).abs().max() > 1e-3


def test_an_edit_beyond_any_sample_changes_the_fingerprint(tokenizer):
    from castlib.testing import tiny_model

    lm = tiny_model("llama", tokenizer=tokenizer)
    emb = lm.model.get_input_embeddings().weight
    store = ActivationStore()
    record_activations(lm, PROMPTS, layers=[1], store=store)
    before = model_fingerprint(lm.model)
    flat = emb.numel() // 4096  # the old sample's stride: this index was never sampled
    row, col = divmod(flat + 1, emb.shape[1])
    with torch.no_grad():
        emb[row, col] += 1.0  # an in-place edit: torch's version counter moves
    assert model_fingerprint(lm.model) != before
    again = record_activations(lm, PROMPTS, layers=[1], store=store)
    torch.testing.assert_close(again, _plain(lm, layers=[1]), atol=1e-5, rtol=0)
    # an edit through .data bypasses the version counter: the full hash still sees it, and
    # `forget` makes the store hash again
    seen = store.fingerprint(lm.model)
    emb.data[row, col] += 1.0
    assert model_fingerprint(lm.model) != seen
    store.forget(lm.model)
    assert store.fingerprint(lm.model) == model_fingerprint(lm.model)


def test_concurrent_writers_of_one_key_never_crash_or_tear(tmp_path):
    rows = [torch.full((2, 8), float(i)) for i in range(8)]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                ActivationStore(tmp_path).put("k" * 64, rows[i])
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = ActivationStore(tmp_path).get("k" * 64, (2, 8))
    assert got is not None and any(torch.equal(got, r) for r in rows)
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------- 1. the sweep


@contextmanager
def _hooked(module, pre=False):
    if pre:
        handle = module.register_forward_pre_hook(lambda m, a: (a[0] * 1.5, *a[1:]))
    else:
        handle = module.register_forward_hook(lambda m, a, o: o * 1.5)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("how", ["mlp_hook", "block_pre_hook"])
def test_sweep_refuses_configurations_with_foreign_hooks(lm, how):
    task = make_task("tgt", n_train=4, n_test=6, seed=3)
    multi = dataclasses.replace(task, labels=("very bad", "not bad at all"))
    if how == "mlp_hook":
        config = lambda: _hooked(lm.blocks[1].mlp)  # noqa: E731
    else:
        config = lambda: _hooked(lm.blocks[1], pre=True)  # noqa: E731
    with pytest.raises(ValueError, match=r"hooks other than castlib's.*layers\.1"):
        evaluate_sweep(lm, multi, [None, config])
    with pytest.raises(ValueError, match="hooks other than"):
        evaluate_sweep(lm, task, [config])  # the single-configuration path too
    assert not installed_hooks(lm.model)


def test_sweep_refuses_a_hook_present_before_it(lm):
    task = dataclasses.replace(make_task("tgt", 4, 6, seed=3), labels=("very bad", "not bad"))
    with _hooked(lm.blocks[0].mlp), pytest.raises(ValueError, match=r"hooks other than.*mlp"):
        evaluate_sweep(lm, task, [None, None])


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    layers=st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
    alpha=st.floats(-6.0, 6.0, allow_nan=False),
    seed=st.integers(0, 2**16),
    op=st.sampled_from(["add", "replace"]),
    norm=st.booleans(),
)
def test_store_and_sweep_agree_with_the_uncached_path(lm, layers, alpha, seed, op, norm):
    v = torch.randn(lm.n_layers, lm.hidden_size, generator=torch.Generator().manual_seed(seed))

    def config():
        return steer(lm, v, alpha=alpha, layers=layers, op=op, norm_preserving=norm)

    store = ActivationStore()
    record_activations(lm, PROMPTS, layers=[1, 3], store=store)
    with config():
        got = record_activations(lm, PROMPTS, layers=[1, 3], store=store)
        want = _plain(lm)
    assert torch.equal(got, want)
    task = dataclasses.replace(make_task("tgt", 2, 5, seed=seed), labels=("very bad", "good"))
    results = evaluate_sweep(lm, task, [None, config], batch_size=2)
    assert {r.scoring for r in results} == {"last_token_cached"}  # the fast path ran
    for result, cfg in zip(results, [None, config], strict=True):
        if cfg is None:
            full = evaluate(lm, task, batch_size=2)
        else:
            with cfg():
                full = evaluate(lm, task, batch_size=2)
        assert [p["pred"] for p in result.predictions] == [p["pred"] for p in full.predictions]
        for a, b in zip(result.predictions, full.predictions, strict=True):
            assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-4)


# ---------------------------------------------------------------- 2. overflow and ties


def test_an_overflowing_scale_raises_at_the_call(lm):
    task = make_task("tgt", 4, 6, seed=3)
    v = torch.ones(lm.hidden_size)
    with steer(lm, v, alpha=1e30, layers=[1]):
        with pytest.raises(FloatingPointError, match="NaN log-probabilities"):
            evaluate(lm, task)
        with pytest.raises(FloatingPointError, match="non-finite activations"):
            record_activations(lm, PROMPTS, layers=[2], store=None)
        scores, _ = score_prompts(lm, PROMPTS, list(task.labels))  # a grid's raw scores
        assert torch.isnan(scores).all()  # visible, so a tuning grid skips the point
    config = lambda: steer(lm, v, alpha=1e30, layers=[1])  # noqa: E731
    multi = dataclasses.replace(task, labels=("very bad", "not bad at all"))
    with pytest.raises(FloatingPointError):
        evaluate_sweep(lm, multi, [None, config])


def test_ties_are_counted_in_the_record():
    task = make_task("tgt", 2, 4)
    scores = torch.tensor([[-1.0, -1.0], [-2.0, -1.0], [-3.0, -3.0], [-0.5, -4.0]])
    result = result_from_scores(task, "test", task.test[:4], scores, [3] * 4, 0.1)
    assert result.ties == 2 and result.to_dict()["ties"] == 2


def test_labels_that_tokenise_identically_are_refused_at_first_scoring(lm):
    task = dataclasses.replace(make_task("tgt", 2, 4), labels=("é", "ü"))  # both " <unk>"
    with pytest.raises(ValueError, match="tokenise identically"):
        evaluate(lm, task)


def test_labels_equal_up_to_whitespace_and_duplicate_answers_are_refused(lm):
    with pytest.raises(TaskFormatError, match="up to surrounding whitespace"):
        dataclasses.replace(make_task("tgt", 2, 4), labels=("positive", " positive"))
    with pytest.raises(ValueError, match="repeated"):
        score_prompts(lm, PROMPTS, ["good", "bad", "good"])
    with pytest.raises(ValueError, match="whitespace"):
        score_prompts(lm, PROMPTS, ["good", " good"])


# ---------------------------------------------------------------- 3. vectors are values


def test_from_tensor_copies_and_steering_uses_a_snapshot(lm, tmp_path):
    acc = torch.ones(2, lm.hidden_size)
    v = SteeringVector.from_tensor(acc, model_id=lm.name, n_layers=lm.n_layers, layers=[1, 2])
    acc.zero_()
    assert torch.equal(v[1], torch.ones(lm.hidden_size))
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert torch.equal(back[2], torch.ones(lm.hidden_size))
    raw = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    with steer(lm, raw, alpha=2.0, layers=[1]):
        before = _plain(lm)
        raw.mul_(100.0)  # the caller edits its tensor mid-run
        after = _plain(lm)
    assert torch.equal(before, after)


def test_derived_vectors_record_how_they_were_derived(lm):
    v = SteeringVector({1: torch.ones(lm.hidden_size)}, lm.name, lm.hidden_size, lm.n_layers)
    v = dataclasses.replace(v, method="cast", params={"k": 2})
    tripled = 3 * v
    assert tripled.metadata() != v.metadata()
    assert tripled.method == "3.0*(cast)" and tripled.params == {"scale": 3.0, "of": {"k": 2}}
    assert (v / 2).params["scale"] == 0.5
    total = v + tripled
    assert total.method == "(cast)+(3.0*(cast))" and set(total.params) == {"left", "right"}


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (lambda h: torch.ones(h, dtype=torch.complex64), TypeError, "complex64.*floating-point"),
        (lambda h: torch.ones(h, dtype=torch.bool), TypeError, "bool.*floating-point"),
        (lambda h: torch.ones(h, device="meta"), ValueError, "meta device.*float tensor"),
    ],
)
def test_vectors_of_the_wrong_kind_are_refused_naming_the_dtype(lm, bad, error, words):
    vec = bad(lm.hidden_size)
    with pytest.raises(error, match=words):
        SteeringVector({1: vec}, lm.name, lm.hidden_size, lm.n_layers)
    with pytest.raises(error, match=words):
        steer(lm, vec, layers=[1])
    with pytest.raises(error, match=words):
        steer(lm, {1: vec})
    assert not lm.interventions and not installed_hooks(lm.model)


def test_a_scale_that_overflows_a_vector_is_named(lm):
    v = SteeringVector({1: torch.ones(lm.hidden_size)}, lm.name, lm.hidden_size, lm.n_layers)
    with pytest.raises(ValueError, match=r"scaling the steering vector by 1e\+39.*layer 1"):
        v * 1e39


# ---------------------------------------------------------------- 4. task identity


def _write_task(root, folder, meta, rows=None):
    rows = rows or [
        {"id": "a", "text": "x", "label": "no"},
        {"id": "b", "text": "y", "label": "yes"},
    ]
    path = root / folder
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return path


META = {"kind": "classification", "labels": ["no", "yes"], "instruction": "x", "fields": ["text"]}


def test_a_task_folder_and_its_meta_name_must_agree(tmp_path):
    _write_task(tmp_path, "tgt", {**META, "name": "src"})
    with pytest.raises(TaskFormatError, match=r"names the task 'src' but its folder is 'tgt'"):
        load_task("tgt", tmp_path)
    _write_task(tmp_path, "ok", {**META, "name": "ok"})
    assert load_task("ok", tmp_path).name == "ok"


# ---------------------------------------------------------------- 6. messages that name things


def test_meta_counts_given_as_strings_are_refused(tmp_path):
    _write_task(tmp_path, "t", {**META, "counts": {"test": "2"}})
    with pytest.raises(TaskFormatError, match=r"'counts' must map splits to row counts"):
        load_task("t", tmp_path)


def test_data_dir_env_pointing_at_a_file(tmp_path, monkeypatch):
    file = tmp_path / "data.txt"
    file.write_text("x")
    monkeypatch.setenv("CASTLIB_DATA", str(file))
    with pytest.raises(FileNotFoundError, match=r"CASTLIB_DATA\) is a file, not a folder"):
        resolve_data_dir()


@pytest.mark.parametrize("layers", [torch.tensor(2), np.array(2), torch.tensor([2])])
def test_layers_as_a_tensor_or_array(lm, layers):
    got = record_activations(lm, PROMPTS, layers=layers, store=None)
    assert torch.equal(got, _plain(lm, layers=[2]))


def test_seeds_beyond_64_bits_are_named_and_numpy_ints_accepted(lm):
    tgt = make_task("tgt", 12, 6, seed=2)
    with pytest.raises(ValueError, match=r"seed must be an int in 0 \.\. 2\*\*63 - 1"):
        methods.get("zero_shot")().fit(lm, [tgt], tgt, seed=2**70)
    m = methods.get("zero_shot")().fit(lm, [tgt], tgt, seed=np.int64(3))
    assert m.seed == 3 and type(m.seed) is int
    rec = m.evaluate(lm, tgt, limit=3)
    ties = sum(len(set(p["log_probs"])) < len(p["log_probs"]) for p in m.last_result.predictions)
    assert rec["ties"] == m.last_result.ties == ties  # the record reports them


@pytest.fixture()
def fitted(lm):
    tgt = make_task("tgt", 12, 6, seed=2)
    m = methods.get("task_vector")(n_prompts=2, k=1, n_tune=2, layers=(1,), alphas=(1.0,))
    return m.fit(lm, [make_task("src", 20, 4, seed=1)], tgt)


def test_method_save_onto_a_file_or_a_folder_named_method_json(fitted, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{file} is a file; give a folder path"):
        fitted.save(file)
    with pytest.raises(NotADirectoryError, match="a part of it is a file"):
        fitted.save(file / "below")
    (tmp_path / "out" / "method.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"method\.json is a folder"):
        fitted.save(tmp_path / "out")
    assert not (tmp_path / "out" / "vector.safetensors").exists()


def test_method_save_on_a_full_disk_leaves_nothing_behind(fitted, tmp_path, monkeypatch):
    from pathlib import Path

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        fitted.save(tmp_path / "out")
    assert not (tmp_path / "out" / "vector.safetensors").exists()


def test_vector_save_onto_a_folder_or_a_failing_disk_names_the_path(lm, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    v = SteeringVector({1: torch.ones(lm.hidden_size)}, lm.name, lm.hidden_size, lm.n_layers)
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path}: it is a folder"):
        v.save(tmp_path)

    def fail(*args, **kwargs):
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match=r"could not write the steering vector to .*v\.safetensors"):
        v.save(tmp_path / "v.safetensors")


@pytest.mark.parametrize("n", ["16", True, 0, 2.0])
def test_sample_test_refuses_what_is_not_a_row_count(n):
    from castlib.repro.nbtools import sample_test

    with pytest.raises((TypeError, ValueError), match=r"sample_test: n .*must be an int >= 1"):
        sample_test(make_task("t", 4, 8), n)


def test_invisible_and_oversized_prompts_are_refused_before_tokenising(lm, monkeypatch):
    with pytest.raises(ValueError, match="invisible format characters"):
        record_activations(lm, ["\u200b\u200d\ufeff"], layers=[1])
    with pytest.raises(ValueError, match="invisible"):
        score_prompts(lm, ["good", "\u200b \u2060"], ["good", "bad"])
    calls = []
    real = lm.tokenizer.__class__.__call__

    def counting(self, text, *args, **kwargs):
        calls.append(len(text) if isinstance(text, str) else sum(map(len, text)))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(lm.tokenizer.__class__, "__call__", counting)
    huge = "good " * 400_000  # 2 MB; the tiny model's context is 512 tokens
    with pytest.raises(ValueError, match=r"longer than the context.*first 8,192 characters"):
        score_prompts(lm, [huge], ["good", "bad"])
    assert max(calls) < 10_000  # only a prefix was tokenised


def test_foreign_hooks_name_the_module(lm):
    with _hooked(lm.blocks[2].mlp):
        assert any("layers.2.mlp: forward hook" in h for h in foreign_hooks(lm))
    v = torch.zeros(lm.hidden_size)
    with steer(lm, v, layers=[1]):
        assert foreign_hooks(lm) == []  # castlib's own steering is not foreign
        assert installed_hooks(lm.model)  # ... but it is hooked (the store is bypassed)


def test_task_is_not_fooled_by_hand_built_duplicates():
    with pytest.raises(TaskFormatError, match="repeat a label"):
        Task("t", "classification", ("a", "a"), "x", ("text",), {"test": []})


# ---------------------------------------------------------------- 5. typed configs


def _config_with(tmp_path, text):
    from tests.test_runs import make_notebook

    make_notebook(tmp_path / "nb.ipynb")
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nruns:\n  - notebook: nb.ipynb\n{text}")
    return path


@pytest.mark.parametrize(
    "text, words",
    [
        ("    parameters: {n: yes}", r"'n' = True \(bool\) must be an int \(YAML 1\.1 reads yes"),
        ("    parameters: {alpha: 1e-3}", r"'alpha' = '1e-3' \(str\).*write 1\.0e-3"),
        ("    parameters: {n: abc}", r"'n' = 'abc' \(str\) must be an int.*default .* is 1"),
        ("    parameters: {model: no}", r"'model' = False \(bool\) must be a string.*quote"),
        ("    parameters: {flag: 1}", r"'flag' = 1 \(int\) must be true or false"),
        ("    grid: {n: [1, x]}", r"grid\.n\[1\]: parameter 'n' = 'x'"),
        ("    parameters: {tasks: [a, 3]}", None),  # the default [] says nothing about items
    ],
)
def test_config_values_must_have_their_default_type(tmp_path, monkeypatch, text, words):
    from castlib.repro.runs import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    path = _config_with(tmp_path, text)
    if words is None:
        assert len(load_config(path).runs) == 1
        return
    with pytest.raises(ConfigError, match=words):
        load_config(path)


def test_yaml_floats_that_yaml_reads_as_floats_pass(tmp_path, monkeypatch):
    from castlib.repro.runs import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(_config_with(tmp_path, "    parameters: {alpha: 1.0e-3, n: null}"))
    assert cfg.runs[0].parameters == {"alpha": 1e-3, "n": None}


def test_unwritable_output_dir_is_a_config_error_exit_2(tmp_path, monkeypatch, capsys):
    import os

    from castlib.repro.runs import cli as runs_cli

    monkeypatch.chdir(tmp_path)
    path = _config_with(tmp_path, "")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path.write_text(path.read_text().replace(str(tmp_path / "out"), str(blocker / "out")))
    assert runs_cli.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: {path}: output_dir {blocker / 'out'} lies below the regular file {blocker}; it must be a folder"
    )
    if os.geteuid() == 0:
        return  # root writes into read-only folders: nothing to refuse
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        path.write_text(path.read_text().replace(str(blocker / "out"), str(ro / "out")))
        assert runs_cli.main([str(path)]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)
