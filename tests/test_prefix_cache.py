"""Prefix-cached scoring: parity with score_prompts, no cache mutation, refusal under steering."""

from __future__ import annotations

import pytest
import torch

from castlib.prompts import CrossTask
from castlib.scoring import evaluate, score_prompts
from castlib.scoring.kv_cache import expand_cache
from castlib.scoring.prefix_cache import (
    PrefixCache,
    build_prefix_cache,
    joint_tokenisation_matches,
    score_prompts_cached,
    score_suffixes,
    split_shared_prefix,
)
from castlib.steer import steer
from castlib.testing import tiny_model

from .conftest import make_task

PARITY_FAMILIES = ("llama", "qwen2", "gemma3", "gpt2")

# long enough that the tiny gemma3's sliding window (8 tokens) is exceeded by the prefix
PREFIX = (
    "classify the sentiment .\n\ntext : the movie was good\nanswer : positive\n\n"
    "text : bad film , not great\nanswer : negative\n\n"
)
SUFFIXES = [
    "Classify the review .\n\ntext : good",
    "Which film ?\n\ntext : the movie was very bad and not good at all",
    "X\n\ntext : a",
    "text : great film",
]
SINGLE = ["positive", "negative"]  # single distinct tokens in the tiny vocabulary
MULTI = ["very good", "bad", "not bad at all"]  # multi-token answers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=PARITY_FAMILIES)
def parity_lm(request, tokenizer):
    return tiny_model(request.param, tokenizer=tokenizer)


def test_split_shared_prefix():
    prompts = [PREFIX + s for s in SUFFIXES]
    prefix, suffixes = split_shared_prefix(prompts)
    assert prefix == PREFIX
    assert suffixes == SUFFIXES
    # the cut is the last blank line of the common part that is followed by text
    prefix, suffixes = split_shared_prefix(["a\n\nb\n\nc", "a\n\nb\n\nd"])
    assert (prefix, suffixes) == ("a\n\nb\n\n", ["c", "d"])
    prefix, suffixes = split_shared_prefix(["a\n\nbc\n\n\tc", "a\n\nbd\n\n\td"])
    assert (prefix, suffixes) == ("a\n\n", ["bc\n\n\tc", "bd\n\n\td"])
    with pytest.raises(ValueError, match="share no prefix"):
        split_shared_prefix(["a\n\n b", "a\n\n c"])  # blank line followed by a space
    with pytest.raises(ValueError, match="share no prefix"):
        split_shared_prefix(["abc\n\nx", "abd\n\nx"])


def test_joint_tokenisation_matches_the_concatenation(parity_lm):
    assert all(joint_tokenisation_matches(parity_lm, PREFIX, SUFFIXES))


@pytest.mark.parametrize("answers", [SINGLE, MULTI], ids=["single_token", "multi_token"])
def test_parity_with_score_prompts(parity_lm, answers):
    prompts = [PREFIX + s for s in SUFFIXES]
    assert all(joint_tokenisation_matches(parity_lm, PREFIX, SUFFIXES))
    ref, ref_tokens = score_prompts(parity_lm, prompts, answers, batch_size=3, progress=False)
    got, got_tokens = score_prompts_cached(
        parity_lm, prompts, answers, batch_size=3, progress=False
    )
    assert got.shape == ref.shape == (len(prompts), len(answers))
    assert got_tokens == ref_tokens
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max()


def test_evaluate_routes_to_prefix_cache(lm):
    source, target = make_task("src", seed=1), make_task("tgt", seed=2)
    builder = CrossTask(source, tuple(source.train[:3]))
    plain = evaluate(lm, target, prompt=builder, batch_size=3, progress=False)
    cached = evaluate(lm, target, prompt=builder, batch_size=3, progress=False, prefix_cache=True)
    assert [p["pred"] for p in plain.predictions] == [p["pred"] for p in cached.predictions]
    assert plain.prompt_tokens_total == cached.prompt_tokens_total
    for a, b in zip(plain.predictions, cached.predictions, strict=True):
        assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-4)


def test_cache_is_not_mutated(tokenizer):
    lm = tiny_model("gemma3", tokenizer=tokenizer)  # sliding-window + full layers
    pc = build_prefix_cache(lm, PREFIX)
    assert isinstance(pc, PrefixCache) and pc.n_tokens == len(tokenizer(PREFIX)["input_ids"])
    before = [(layer.keys.clone(), layer.values.clone()) for layer in pc.cache.layers]
    lengths = [layer.get_seq_length() for layer in pc.cache.layers]
    for answers in (SINGLE, MULTI):
        first, _ = score_suffixes(lm, pc, SUFFIXES, answers, batch_size=2, progress=False)
        second, _ = score_suffixes(lm, pc, SUFFIXES, answers, batch_size=3, progress=False)
        assert torch.allclose(first, second, atol=1e-6, rtol=0)
        again, _ = score_suffixes(lm, pc, SUFFIXES, answers, batch_size=2, progress=False)
        assert torch.equal(first, again)
    assert [layer.get_seq_length() for layer in pc.cache.layers] == lengths
    for (k, v), layer in zip(before, pc.cache.layers, strict=True):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)


def test_expand_cache_shares_storage(lm):
    pc = build_prefix_cache(lm, PREFIX)
    big = expand_cache(pc.cache, 5)
    for src, dst in zip(pc.cache.layers, big.layers, strict=True):
        assert dst.keys.shape[0] == 5 and src.keys.shape[0] == 1
        assert dst.keys.data_ptr() == src.keys.data_ptr()  # a view, no copy


def test_refused_while_steering(lm):
    prompts = [PREFIX + s for s in SUFFIXES]
    vec = torch.ones(lm.hidden_size)
    with steer(lm, vec, alpha=1.0, layers=[1]):
        with pytest.raises(RuntimeError, match="steering"):
            score_prompts_cached(lm, prompts, SINGLE, progress=False)
        with pytest.raises(RuntimeError, match="steering"):
            score_prompts(lm, prompts, SINGLE, progress=False, prefix_cache=True)
        with pytest.raises(RuntimeError, match="steering"):
            build_prefix_cache(lm, PREFIX)
    # hooks removed: works again
    score_prompts_cached(lm, prompts, SINGLE, progress=False)


def test_prefix_cache_of_another_model_is_refused(lm, tokenizer):
    other = tiny_model("qwen2", tokenizer=tokenizer)
    pc = build_prefix_cache(other, PREFIX)
    with pytest.raises(ValueError, match="another model"):
        score_suffixes(lm, pc, SUFFIXES, SINGLE, progress=False)


@pytest.mark.real_model
def test_parity_on_the_embedded_model(gemma, repo_data):
    """Cross-task ICL on the embedded Gemma: a 4-shot prefix, and one longer than its sliding
    window (512 tokens), so the cached sliding-window layers are exercised."""
    from castlib.tasks import load_task

    source = load_task("sst2", repo_data)
    target = load_task("financial_phrasebank", repo_data)
    window = gemma.model.config.get_text_config().sliding_window
    for k, n in ((4, 3), (18, 2)):
        builder = CrossTask(source, tuple(source.train[:k]))
        prompts = [builder(target, ex) for ex in target.test[:n]]
        prefix, suffixes = split_shared_prefix(prompts)
        # every query shares the demonstrations and the target instruction: all cached
        assert prefix.endswith(f"\n\n{target.instruction}\n\n")
        assert all(joint_tokenisation_matches(gemma, prefix, suffixes))
        if k == 18:
            assert len(gemma.tokenizer(prefix)["input_ids"]) > window
        ref, ref_tokens = score_prompts(gemma, prompts, target.labels, batch_size=2)
        got, got_tokens = score_prompts_cached(gemma, prompts, target.labels, batch_size=2)
        assert got_tokens == ref_tokens
        assert torch.allclose(got, ref, atol=1e-3, rtol=0), (k, (got - ref).abs().max())
