"""The fit store: a fit that reads no target row (I2CL) is done once per (sources, seed) and
reloaded for other targets, bit for bit; anything that changes the fit gives another key."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from castlib.activation_store import ActivationStore
from castlib.methods.fit_store import (
    FIT_STORE_ENV,
    FITS_FOLDER,
    FitStore,
    code_fingerprint,
    fit_store_for,
    task_fingerprint,
)
from castlib.methods.i2cl import I2CL
from castlib.methods.task_vector import TaskVector
from castlib.testing import tiny_model
from tests.conftest import make_task

SOURCE = make_task("src", n_train=30, n_test=2, seed=1)
TARGET_A = make_task("tgt_a", n_train=8, n_test=6, seed=2)
TARGET_B = make_task("tgt_b", n_train=8, n_test=6, seed=3)


def _i2cl(**extra) -> I2CL:
    # no choice against the unsteered model: the forward passes counted are the fit's own
    params = {"batch_size": 8, "demos_per_class": 2, "epochs": 2, "lr": 0.05, **extra}
    params.setdefault("include_unsteered", False)
    return I2CL(progress=False, **params)


def _forwards(lm):
    calls = {"n": 0}

    def pre(module, args, kwargs):
        calls["n"] += 1

    return calls, lm.base.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.fixture(autouse=True)
def _no_named_fit_store(monkeypatch):
    monkeypatch.delenv(FIT_STORE_ENV, raising=False)


@pytest.fixture()
def stored_lm(tokenizer, tmp_path):
    lm = tiny_model("llama", tokenizer=tokenizer)
    lm.activation_store = ActivationStore(tmp_path / "store")
    return lm


def _saved(lm) -> list[str]:
    folder = lm.activation_store.folder / FITS_FOLDER
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_target_free_fit_is_reloaded_for_another_target(stored_lm, tokenizer):
    first = _i2cl().fit(stored_lm, [SOURCE], TARGET_A, seed=0)
    assert len(_saved(stored_lm)) == 1 and "fit_reused_from" not in first.info
    calls, handle = _forwards(stored_lm)
    try:
        again = _i2cl().fit(stored_lm, [SOURCE], TARGET_B, seed=0)
    finally:
        handle.remove()
    assert calls["n"] == 0  # nothing ran: the fit was read back
    assert again.target == "tgt_b" and again.info["fit_reused_from"] == "tgt_a"
    assert torch.equal(again.coef, first.coef) and torch.equal(again.context, first.context)
    assert again.fit_stats == first.fit_stats  # the cost of the fit, not of reading it back
    # parity with an independent fresh fit for target B (no store on that model)
    fresh_lm = tiny_model("llama", tokenizer=tokenizer)
    fresh = _i2cl().fit(fresh_lm, [SOURCE], TARGET_B, seed=0)
    assert torch.equal(fresh.coef, again.coef) and torch.equal(fresh.context, again.context)
    rec, ref = again.evaluate(stored_lm, TARGET_B), fresh.evaluate(fresh_lm, TARGET_B)
    assert rec["predictions"] == ref["predictions"] and rec["accuracy"] == ref["accuracy"]
    assert rec["fit_reused_from"] == "tgt_a" and "fit_reused_from" not in ref
    assert rec["coefficients"] == ref["coefficients"]
    assert _saved(stored_lm) == _saved(stored_lm)[:1]  # a reuse saves nothing new


@pytest.mark.parametrize(
    "change",
    ["seed", "params", "source_rows", "weights"],
)
def test_whatever_changes_the_fit_changes_the_key(stored_lm, change):
    _i2cl().fit(stored_lm, [SOURCE], TARGET_A, seed=0)
    method, source, seed = _i2cl(), SOURCE, 0
    if change == "seed":
        seed = 1
    elif change == "params":
        method = _i2cl(noise_scale=0.002)
    elif change == "source_rows":
        rows = list(SOURCE.split("train"))
        rows[0] = dataclasses.replace(rows[0], fields={"text": "good good good"})
        source = dataclasses.replace(SOURCE, splits={**SOURCE.splits, "train": rows})
        assert task_fingerprint(source) != task_fingerprint(SOURCE)
    else:
        with torch.no_grad():
            next(iter(stored_lm.blocks[1].parameters())).add_(1e-3)
    calls, handle = _forwards(stored_lm)
    try:
        refit = method.fit(stored_lm, [source], TARGET_B, seed=seed)
    finally:
        handle.remove()
    assert calls["n"] > 0 and "fit_reused_from" not in refit.info
    assert len(_saved(stored_lm)) == 2


def test_methods_that_read_the_target_are_never_stored(stored_lm):
    TaskVector(k=2, n_prompts=4, n_tune=4).fit(stored_lm, [SOURCE], TARGET_A, seed=0)
    assert _saved(stored_lm) == []


def test_no_disk_store_no_reuse(tokenizer):
    lm = tiny_model("llama", tokenizer=tokenizer)
    lm.activation_store = ActivationStore()  # memory only
    _i2cl().fit(lm, [SOURCE], TARGET_A, seed=0)
    again = _i2cl().fit(lm, [SOURCE], TARGET_B, seed=0)
    assert "fit_reused_from" not in again.info


def test_a_named_fit_store_takes_the_place_of_the_activation_stores(
    tokenizer, tmp_path, monkeypatch
):
    """$CASTLIB_FIT_STORE (a batch's fit_store key) holds the fits, with or without an on-disk
    activation store: a second process (here: a second model object) reloads from it."""
    monkeypatch.setenv(FIT_STORE_ENV, str(tmp_path / "kept"))
    lm = tiny_model("llama", tokenizer=tokenizer)
    lm.activation_store = ActivationStore()  # memory only: no fits/ folder of its own
    assert fit_store_for(lm).folder == tmp_path / "kept"
    first = _i2cl().fit(lm, [SOURCE], TARGET_A, seed=0)
    assert len(list((tmp_path / "kept").iterdir())) == 1
    other = tiny_model("llama", tokenizer=tokenizer)
    other.activation_store = ActivationStore(tmp_path / "store")
    again = _i2cl().fit(other, [SOURCE], TARGET_B, seed=0)
    assert again.info["fit_reused_from"] == "tgt_a" and torch.equal(again.coef, first.coef)
    assert not (tmp_path / "store" / FITS_FOLDER).exists()


def test_an_unreadable_save_is_a_miss_and_is_replaced(stored_lm):
    first = _i2cl().fit(stored_lm, [SOURCE], TARGET_A, seed=0)
    (key,) = _saved(stored_lm)
    doc_path = stored_lm.activation_store.folder / FITS_FOLDER / key / "method.json"
    doc_path.write_text("{ torn")
    with pytest.warns(UserWarning, match="unreadable"):
        again = _i2cl().fit(stored_lm, [SOURCE], TARGET_B, seed=0)
    assert "fit_reused_from" not in again.info and torch.equal(again.coef, first.coef)
    assert json.loads(doc_path.read_text())["target"] == "tgt_b"  # replaced by the refit
    store = FitStore(stored_lm.activation_store.folder / FITS_FOLDER)
    with pytest.warns(UserWarning, match="not 'task_vector'"):
        assert store.load(key, TaskVector) is None  # another method's save is never read


def test_code_fingerprint_covers_the_method_module_and_its_castlib_imports():
    assert code_fingerprint(I2CL) != code_fingerprint(TaskVector)
    assert code_fingerprint(I2CL) == code_fingerprint(I2CL)


def test_an_interrupted_calibration_resumes_where_it_stopped(tokenizer, tmp_path):
    ref = _i2cl(epochs=4).fit(tiny_model("llama", tokenizer=tokenizer), [SOURCE], TARGET_A)
    lm = tiny_model("llama", tokenizer=tokenizer)
    lm.activation_store = ActivationStore(tmp_path / "store")
    # 4 demonstrations, 2 per step: 2 steps an epoch, 8 in all; forward 1 is the context
    # vectors' pass, forward 2 + s is step s: the 7th forward is step 5, in epoch 3
    calls = {"n": 0}

    def stop_at_step_5(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # what a session's end does to a batch

    handle = lm.base.register_forward_pre_hook(stop_at_step_5, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            _i2cl(epochs=4).fit(lm, [SOURCE], TARGET_A)
    finally:
        handle.remove()
    (partial,) = (lm.activation_store.folder / FITS_FOLDER).iterdir()
    assert partial.name.endswith(".partial") and any(partial.iterdir())
    calls, handle = _forwards(lm)
    try:
        resumed = _i2cl(epochs=4).fit(lm, [SOURCE], TARGET_A)
    finally:
        handle.remove()
    assert resumed.info["calib_resumed_at_step"] == 4  # the start of epoch 3
    assert calls["n"] == 1 + 4  # the context vectors again, then steps 4..7 only
    assert torch.equal(resumed.coef, ref.coef)  # bit for bit the uninterrupted calibration
    assert resumed.info["calib_epoch_losses"] == ref.info["calib_epoch_losses"]
    assert not partial.exists() and len(_saved(lm)) == 1  # saved, checkpoints removed
    assert "resumed_seconds" not in resumed.info and resumed.fit_stats["seconds"] > 0
