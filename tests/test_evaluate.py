import pytest
import torch

from castlib.prompts import FewShot, zero_shot
from castlib.scoring import evaluate, macro_f1, score_prompts
from castlib.steer import steer
from castlib.tasks import Task


def manual_logprob(lm, prompt, answer):
    """Reference: full logits over the unpadded prompt + answer, summed answer log-probs."""
    p = lm.tokenizer(prompt)["input_ids"]
    a = lm.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(a))


def test_single_token_scores_match_reference(family_lm, toy_task):
    prompts = [zero_shot(toy_task, ex) for ex in toy_task.test[:4]]
    scores, n_tokens = score_prompts(family_lm, prompts, toy_task.labels, batch_size=3)
    for i, p in enumerate(prompts):
        for j, a in enumerate(toy_task.labels):
            assert abs(scores[i, j] - manual_logprob(family_lm, p, a)) < 1e-4
    assert n_tokens == [len(family_lm.tokenizer(p)["input_ids"]) for p in prompts]


def test_multi_token_scores_match_reference(lm, toy_task):
    answers = ["very good", "not good at all", "b"]  # several tokens each
    prompts = [zero_shot(toy_task, ex) for ex in toy_task.test[:3]]
    scores, _ = score_prompts(lm, prompts, answers, batch_size=4)
    for i, p in enumerate(prompts):
        for j, a in enumerate(answers):
            assert abs(scores[i, j] - manual_logprob(lm, p, a)) < 1e-4


def test_evaluate_record_and_batching(lm, toy_task):
    a = evaluate(lm, toy_task, batch_size=1)
    b = evaluate(lm, toy_task, batch_size=8)
    assert a.n == len(toy_task.test) == len(a.predictions)
    assert [p["pred"] for p in a.predictions] == [p["pred"] for p in b.predictions]
    assert 0.0 <= a.accuracy <= 1.0 and 0.0 <= a.macro_f1 <= 1.0
    assert a.accuracy == sum(p["correct"] for p in a.predictions) / a.n
    few = evaluate(lm, toy_task, prompt=FewShot(tuple(toy_task.train[:2])), limit=3)
    assert few.n == 3 and few.prompt_tokens_per_query > a.prompt_tokens_per_query
    d = a.to_dict(with_predictions=False)
    assert {"accuracy", "macro_f1", "n", "prompt_tokens_per_query", "seconds"} <= set(d)


def test_evaluate_inside_steer(lm, toy_task):
    base = evaluate(lm, toy_task)
    with steer(lm, torch.zeros(lm.hidden_size), alpha=5.0, layers=[1]):
        same = evaluate(lm, toy_task)
    with steer(lm, torch.randn(lm.hidden_size) * 50, alpha=1.0, layers=[1]):
        moved = evaluate(lm, toy_task)
    assert [p["log_probs"] for p in base.predictions] == [p["log_probs"] for p in same.predictions]
    assert [p["log_probs"] for p in base.predictions] != [p["log_probs"] for p in moved.predictions]


def test_multi_token_scoring_steers_prompt_last_and_answer_tokens(lm, toy_task):
    """Scoring a multi-token answer under steering equals steering the generation of it."""
    v = torch.randn(lm.hidden_size) * 3
    prompt = zero_shot(toy_task, toy_task.test[0])
    answer = "not good at all"
    with steer(lm, v, alpha=1.0, layers=[1]):
        scores, _ = score_prompts(lm, [prompt], [answer])
        # reference: feed the prompt, then each answer token with the KV cache (decode steps)
        from castlib.scoring.kv_cache import cache_kwargs, returned_cache

        p = lm.tokenizer(prompt, return_tensors="pt")
        a = lm.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = lm.model(**p, use_cache=True)
            total, past, mask = 0.0, returned_cache(out), p["attention_mask"]
            logits = out.logits[0, -1]
            for tok in a:
                total += float(torch.log_softmax(logits.float(), -1)[tok])
                mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
                out = lm.model(
                    input_ids=torch.tensor([[tok]]),
                    attention_mask=mask,
                    **cache_kwargs(lm, past),  # `cache` where transformers takes it
                    use_cache=True,
                )
                past, logits = returned_cache(out), out.logits[0, -1]
    assert abs(float(scores[0, 0]) - total) < 1e-4


def test_multiple_choice_restricts_to_available_options(lm):
    from castlib.tasks import Example

    ex = [
        Example(id=str(i), fields={"question": "which ?"}, label=0, options=("x", "y"))
        for i in range(3)
    ]
    task = Task(
        "mc",
        "multiple_choice",
        ("A", "B", "C", "D"),
        "Answer.",
        ("question",),
        {"train": [], "test": ex},
    )
    res = evaluate(lm, task)
    assert {p["pred"] for p in res.predictions} <= {"A", "B"}
    assert all(len(p["log_probs"]) == 2 for p in res.predictions)


def test_label_words_that_tokenise_to_nothing(lm, toy_task):
    with pytest.raises(ValueError, match="tokenises to nothing"):
        score_prompts(lm, ["a"], ["", "x"])


def test_bad_prompt_lists(lm, toy_task):
    with pytest.raises(ValueError, match="prompts for"):
        evaluate(lm, toy_task, prompt=["a"])
    with pytest.raises(ValueError, match="empty prompt list"):
        score_prompts(lm, [], ["a", "b"])


def test_macro_f1_by_hand():
    gold = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp0 fn1 -> 0
    assert abs(macro_f1(gold, pred) - (0.5 + 0.8 + 0.0) / 3) < 1e-12


def test_limit_sample_and_examples(lm, toy_task):
    from castlib.scoring import select_examples
    from castlib.tasks import sample_examples

    n = len(toy_task.test)
    assert [e.id for e in select_examples(toy_task, limit=2)] == [e.id for e in toy_task.test[:2]]
    picked = select_examples(toy_task, sample=n - 1, sample_seed=5)
    assert picked == sample_examples(toy_task.test, n - 1, 5)
    res = evaluate(lm, toy_task, sample=n - 1, sample_seed=5)
    assert res.n == n - 1
    same = evaluate(lm, toy_task, examples=picked)
    assert [p["pred"] for p in res.predictions] == [p["pred"] for p in same.predictions]
    with pytest.raises(ValueError, match="not both"):
        evaluate(lm, toy_task, limit=2, sample=2)
    with pytest.raises(ValueError, match="not both"):
        evaluate(lm, toy_task, examples=picked, sample=2)
