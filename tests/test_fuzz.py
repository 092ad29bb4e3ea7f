"""Property tests (hypothesis) of the public functions on random input: every call either
returns a well-formed result or raises TypeError/ValueError/IndexError/KeyError with a
message; nothing else escapes, and nothing is silently wrong.

Tiny models are built once per module; each property runs a bounded number of examples.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import string
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import castlib.methods as methods  # noqa: E402
from castlib.record import record_activations  # noqa: E402
from castlib.scoring import evaluate, score_prompts, select_examples  # noqa: E402
from castlib.steer import steer  # noqa: E402
from castlib.tasks import Task, TaskFormatError, load_task  # noqa: E402
from castlib.testing import tiny_model, tiny_tokenizer  # noqa: E402
from castlib.vectors import SteeringVector  # noqa: E402
from tests.conftest import make_task  # noqa: E402

REFUSED = (TypeError, ValueError, IndexError, KeyError)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SLOW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TOK = tiny_tokenizer()
LM = tiny_model("llama", hidden=16, layers=3, tokenizer=TOK)
TASK = make_task("fz", n_train=6, n_test=5)


def no_hooks() -> bool:
    return not any(b._forward_hooks for b in LM.blocks)


# -- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(-6, 6),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
valid_layers = st.lists(st.integers(-3, 2), min_size=1, max_size=3, unique=True)
layer_lists = st.one_of(
    valid_layers,
    valid_layers,
    valid_layers,
    scalars,
    st.lists(st.integers(-5, 5), max_size=5),
    st.lists(scalars, max_size=4),
    st.tuples(st.integers(-4, 4), st.integers(-4, 4)),
)
alphas = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)
prompt_text = st.text(
    alphabet=st.sampled_from(list(string.printable) + ["é", "日", "\u200b", "\t"]), max_size=40
)
words = st.text(alphabet=string.ascii_letters + " ,.?é日", min_size=1, max_size=30)
prompt_lists = st.one_of(
    st.lists(words.filter(str.strip), min_size=1, max_size=5),  # mostly accepted
    st.lists(words.filter(str.strip), min_size=1, max_size=5),
    st.lists(prompt_text, max_size=5),
    prompt_text,
    st.lists(st.one_of(prompt_text, st.integers(), st.none()), max_size=3),
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=False, width=16),
        st.text(max_size=4),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
metadata = st.fixed_dictionaries(
    {
        "model_id": st.one_of(st.just("m"), st.just("m"), st.text(max_size=3), st.integers()),
        "hidden_size": st.one_of(st.just(4), st.just(4), st.integers(-1, 6), st.text(max_size=2)),
        "n_layers": st.one_of(st.just(3), st.just(3), st.integers(-1, 4), st.floats(0, 4)),
    },
    optional={
        "site": st.one_of(st.just("block_output"), st.text(max_size=4), st.integers()),
        "method": st.one_of(st.text(max_size=4), st.none()),
        "params": st.one_of(
            st.dictionaries(st.text(max_size=3), json_values, max_size=3), json_values
        ),
        "version": st.text(max_size=4),
        "bogus": json_values,
    },
)
tensor_keys = st.one_of(
    st.builds(lambda i: f"layer.{i}", st.integers(-2, 5)),
    st.text(alphabet="layer.0123x-", min_size=1, max_size=8),
)


# -- layer lists ----------------------------------------------------------------------------------


@FAST
@given(layers=layer_lists)
def test_check_layers_returns_sorted_valid_layers_or_refuses(layers):
    try:
        out = LM.check_layers(layers)
    except REFUSED as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    assert out == sorted(set(out)) and all(0 <= la < LM.n_layers for la in out)
    if layers is None:
        assert out == list(range(LM.n_layers))
        return
    given_list = [layers] if isinstance(layers, int) else list(layers)
    assert sorted(int(la) % LM.n_layers for la in given_list) == out
    assert not any(isinstance(la, (bool, float, str)) for la in given_list)


@SLOW
@given(layers=layer_lists, alpha=alphas)
def test_steer_accepts_only_valid_layers_and_finite_alphas(layers, alpha):
    vec = torch.ones(LM.hidden_size)
    try:
        handle = steer(LM, vec, alpha=alpha, layers=layers)
    except REFUSED as err:
        assert str(err)
        assert no_hooks()
        return
    with handle:
        assert isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
        assert math.isfinite(alpha)
        assert sorted(handle.steer_hooks) == LM.check_layers(layers)
    assert no_hooks()


@SLOW
@given(
    mapping=st.dictionaries(st.integers(-3, 3), st.sampled_from([16, 16, 16, 15]), max_size=3),
    layers=st.one_of(st.none(), st.lists(st.integers(-3, 2), max_size=2)),
)
def test_steer_with_a_layer_dict(mapping, layers):
    vec = {k: torch.ones(n) for k, n in mapping.items()}
    try:
        handle = steer(LM, vec, alpha=1.0, layers=layers)
    except REFUSED as err:
        assert str(err)
        assert no_hooks()
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    with handle:
        normalised = {k % LM.n_layers for k in mapping}
        assert len(normalised) == len(mapping)  # -1 and L-1 together are refused
        want = normalised if layers is None else set(LM.check_layers(layers))
        assert set(handle.steer_hooks) == want
    assert no_hooks()


# -- alphas ---------------------------------------------------------------------------------------

BASE = record_activations(LM, ["the movie was good"], layers=[2])


@SLOW
@given(alpha=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))
def test_finite_alpha_gives_finite_states_and_zero_is_identity(alpha):
    vec = torch.linspace(-1, 1, LM.hidden_size)
    with steer(LM, vec, alpha=alpha, layers=[1]):
        out = record_activations(LM, ["the movie was good"], layers=[2])
    assert torch.isfinite(out).all()
    if alpha == 0:
        assert torch.equal(out, BASE)
    assert no_hooks()


@FAST
@given(grid=st.lists(alphas, max_size=4))
def test_tuning_grid_alphas_are_finite_numbers_or_refused(grid):
    try:
        m = methods.get("cast")(alphas=grid)
    except REFUSED as err:
        assert str(err).startswith("cast:") or "alphas" in str(err)
        return
    assert m.params.alphas and all(
        isinstance(a, float) and math.isfinite(a) for a in m.params.alphas
    )


# -- prompt lists ---------------------------------------------------------------------------------


@SLOW
@given(prompts=prompt_lists)
def test_record_activations_on_any_prompt_list(prompts):
    try:
        out = record_activations(LM, prompts, layers=[0, 2], batch_size=2)
    except REFUSED as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    assert isinstance(prompts, list) and all(isinstance(p, str) and p.strip() for p in prompts)
    assert out.shape == (len(prompts), 2, LM.hidden_size) and torch.isfinite(out).all()


@SLOW
@given(
    prompts=prompt_lists,
    answers=st.one_of(
        st.lists(st.sampled_from(["yes", "no", "positive", "not a", "B"]), min_size=1, max_size=3),
        st.lists(st.text(alphabet=string.ascii_letters + " ", max_size=6), max_size=3),
    ),
)
def test_score_prompts_on_any_input(prompts, answers):
    try:
        scores, n_tokens = score_prompts(LM, prompts, answers, batch_size=3)
    except REFUSED as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    assert scores.shape == (len(prompts), len(answers))
    assert torch.isfinite(scores).all() and (scores <= 0).all()
    assert len(n_tokens) == len(prompts)


@FAST
@given(
    limit=st.one_of(
        st.none(),
        st.none(),
        st.integers(1, 8),
        st.integers(-2, 8),
        st.floats(-1, 8),
        st.booleans(),
        st.text(max_size=2),
    ),
    sample=st.one_of(st.none(), st.none(), st.none(), st.integers(-2, 8), st.floats(0, 3)),
)
def test_select_examples_counts(limit, sample):
    try:
        rows = select_examples(TASK, "test", limit=limit, sample=sample)
    except REFUSED as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    assert limit is None or sample is None
    want = len(TASK.test) if (limit or sample) is None else min(limit or sample, len(TASK.test))
    assert len(rows) == want and len({r.id for r in rows}) == want


# -- vector metadata ------------------------------------------------------------------------------


@FAST
@given(meta=metadata, keys=st.lists(tensor_keys, min_size=1, max_size=3, unique=True))
def test_vector_files_load_exactly_or_fail_naming_the_path(meta, keys):
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        tensors = {k: torch.arange(4, dtype=torch.float32) + i for i, k in enumerate(keys)}
        try:
            header = json.dumps(meta)
        except (TypeError, ValueError):
            return
        save_file(tensors, str(path), metadata={"castlib": header})
        try:
            v = SteeringVector.load(path)
        except ValueError as err:
            assert str(path) in str(err)
            return
        assert v.hidden_size == 4 and isinstance(v.model_id, str) and v.model_id.strip()
        assert set(v.layer_ids) == {int(k.split(".")[1]) for k in keys}
        again = SteeringVector.load(v.save(Path(tmp) / "again.safetensors"))
        assert again == v


@FAST
@given(
    meta=metadata,
    layers=st.dictionaries(
        st.one_of(st.integers(0, 2), st.integers(-1, 4), st.booleans(), st.text(max_size=1)),
        st.sampled_from([4, 4, 4, 3]),
        max_size=3,
    ),
)
def test_vector_constructor_validates_metadata(meta, layers):
    meta = {k: v for k, v in meta.items() if k != "bogus"}
    tensors = {k: torch.ones(n) for k, n in layers.items()}
    try:
        v = SteeringVector(layers=tensors, **meta)
    except REFUSED as err:
        assert str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("accepted")
    assert isinstance(v.hidden_size, int) and v.hidden_size >= 1 and v.n_layers >= 1
    assert all(0 <= la < v.n_layers and t.shape == (v.hidden_size,) for la, t in v.layers.items())
    try:
        (v + v) - v
    except REFUSED:
        return
    assert all(torch.allclose(((v + v) - v)[la], v[la]) for la in v.layer_ids)


@FAST
@given(
    scale=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.booleans()
    )
)
def test_vector_scaling_is_finite_or_refused(scale):
    v = SteeringVector({0: torch.ones(4)}, "m", 4, 2)
    try:
        w = v * scale
        q = v / scale
    except (TypeError, ValueError, ZeroDivisionError) as err:
        assert str(err)
        return
    assert torch.isfinite(w[0]).all() and torch.isfinite(q[0]).all()


# -- method parameters ----------------------------------------------------------------------------

NAMES = methods.available()


@FAST
@given(name=st.sampled_from(NAMES), data=st.data())
def test_method_params_are_typed_or_refused(name, data):
    cls = methods.get(name)
    fields = [f.name for f in dataclasses.fields(cls.Params)]
    chosen = data.draw(st.lists(st.sampled_from(fields), max_size=3, unique=True))
    values = {f: data.draw(st.one_of(scalars, st.lists(scalars, max_size=2))) for f in chosen}
    try:
        m = cls(**values)
    except REFUSED as err:
        assert name in str(err) or str(err)
        return
    for f in dataclasses.fields(m.params):
        value = getattr(m.params, f.name)
        assert not (isinstance(value, float) and not math.isfinite(value))
        if isinstance(value, tuple):
            assert all(not isinstance(x, float) or math.isfinite(x) for x in value)
    assert m.params.batch_size >= 1


# -- task rows ------------------------------------------------------------------------------------

row_ids = st.one_of(st.text(max_size=3), st.integers(0, 3))
rows = st.lists(
    st.fixed_dictionaries(
        {
            "id": row_ids,
            "text": st.one_of(prompt_text, st.integers()),
            "label": st.sampled_from(["no", "yes", "maybe", 0, None]),
        },
        optional={"paper_subset": st.one_of(st.booleans(), st.integers(0, 1))},
    ),
    min_size=1,
    max_size=5,
)


@FAST
@given(
    test_rows=rows,
    train_rows=st.lists(
        st.fixed_dictionaries({"id": row_ids, "text": prompt_text, "label": st.just("no")}),
        max_size=3,
    ),
)
def test_task_files_load_validated_or_raise_task_format_error(test_rows, train_rows):
    meta = {
        "kind": "classification",
        "labels": ["no", "yes"],
        "instruction": "x",
        "fields": ["text"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "t"
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps(meta))
        for split, data in (("test", test_rows), ("train", train_rows)):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        try:
            task = load_task("t", tmp)
        except TaskFormatError as err:
            assert str(folder) in str(err)
            return
    assert isinstance(task, Task)
    for split in ("train", "test"):
        ids = [ex.id for ex in task.split(split)]
        assert len(ids) == len(set(ids))
        assert all(ex.label in (0, 1) and ex.fields["text"].strip() for ex in task.split(split))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5))
def test_evaluate_is_deterministic_and_well_formed(seed, n):
    res = evaluate(LM, TASK, sample=n, sample_seed=seed, batch_size=2)
    again = evaluate(LM, TASK, sample=n, sample_seed=seed, batch_size=5)
    assert res.n == min(n, len(TASK.test)) and 0 <= res.accuracy <= 1
    assert [p["pred"] for p in res.predictions] == [p["pred"] for p in again.predictions]
    assert all(len(p["log_probs"]) == 2 for p in res.predictions)
    random.Random(seed)  # seeds of any size are accepted
