import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from castlib import stats
from castlib.stats import (
    COLLAPSE_THRESHOLD,
    Interval,
    accuracy_interval,
    chance_rate,
    compare,
    is_collapsed,
    majority_rate,
    mcnemar_exact,
    mcnemar_stratified,
    paired_difference,
    seed_differences,
    seed_verdict,
    target_table,
    top_label_share,
    two_level_interval,
    verdict,
)


def test_majority_and_chance_rates_by_hand():
    assert majority_rate([0, 1, 1, 2]) == 0.5
    assert majority_rate([3]) == 1.0
    assert chance_rate([2, 4]) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert chance_rate([3, 3, 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no rows"):
        majority_rate([])
    with pytest.raises(ValueError, match="at least one option"):
        chance_rate([2, 0])


def test_mcnemar_hand_worked():
    # b = 3 (only a right), c = 0: p = 2 * (1/2)^3 = 0.25
    a = [1, 1, 1, 0, 1]
    b = [0, 0, 0, 0, 1]
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (3, 0) and result.p_value == 0.25
    # b = 1, c = 1: p = min(1, 2 * (1 + 2) / 4) = 1
    assert mcnemar_exact([1, 0], [0, 1]).p_value == 1.0
    # b = 5, c = 1: 2 * (1 + 6) / 64 = 0.21875
    assert mcnemar_exact([1] * 5 + [0], [0] * 5 + [1]).p_value == 0.21875
    # no discordant pairs: p = 1
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_matches_scipy_binomtest(n_b, n_c):
    a = [1] * n_b + [0] * n_c + [1, 0]
    b = [0] * n_b + [1] * n_c + [1, 0]
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (n_b, n_c)
    expected = 1.0 if n_b + n_c == 0 else binomtest(n_b, n_b + n_c, 0.5).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar_exact(b, a).p_value == result.p_value  # symmetric


def test_accuracy_interval_constant_rows_is_degenerate():
    iv = accuracy_interval([1, 1, 1, 1], n_boot=50)
    assert (iv.estimate, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 4)
    iv = accuracy_interval(np.zeros((3, 5)), n_boot=50)
    assert (iv.estimate, iv.low, iv.high, iv.n) == (0.0, 0.0, 0.0, 5)


def test_seeds_are_pooled_per_row():
    runs = np.array([[1, 0, 1, 1], [1, 1, 0, 1]])
    iv = accuracy_interval(runs, n_boot=100)
    assert iv.estimate == 0.75 and iv.n == 4  # rows, not (seed, row) pairs


def test_bootstrap_is_seeded_and_matches_a_plain_loop():
    rng = np.random.default_rng(5)
    correct = (rng.random(37) < 0.4).astype(float)
    a = accuracy_interval(correct, n_boot=2500, seed=3)
    assert a == accuracy_interval(correct, n_boot=2500, seed=3)
    # the same resamples drawn one chunk at a time by hand
    gen = np.random.default_rng(3)
    means = []
    for start in range(0, 2500, stats.rows._CHUNK):
        size = min(stats.rows._CHUNK, 2500 - start)
        means.extend(correct[gen.integers(0, 37, size=(size, 37))].mean(axis=1))
    low, high = np.quantile(means, [0.025, 0.975])
    assert (a.low, a.high) == (pytest.approx(low), pytest.approx(high))


def test_bootstrap_interval_covers_binomial_width():
    # n = 400 rows at p = 0.3: the normal-approximation 95% half width is 1.96 * sqrt(.21/400)
    correct = np.array([1] * 120 + [0] * 280)
    iv = accuracy_interval(correct, n_boot=10_000)
    half = 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert iv.estimate == 0.3
    assert iv.high - iv.low == pytest.approx(2 * half, rel=0.08)


def test_paired_difference_uses_the_same_rows():
    # b = a shifted on 10 of 200 rows: the paired interval is far narrower than the unpaired
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    flip = np.flatnonzero(a == 0)[:10]
    b[flip] = 1
    d = paired_difference(b, a, n_boot=4000)
    assert d.estimate == pytest.approx(10 / 200)
    assert d.low > 0 and d.excludes_zero  # every differing row favours b
    assert d.high - d.low < 0.1
    same = paired_difference(a, a, n_boot=100)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="not paired"):
        paired_difference(a, a[:-1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_paired_difference_properties(pairs):
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    d = paired_difference(a, b, n_boot=200, seed=1)
    assert d.estimate == pytest.approx(a.mean() - b.mean())
    assert d.low <= d.estimate + 1e-12 and d.estimate - 1e-12 <= d.high
    assert -1 <= d.low <= d.high <= 1
    r = paired_difference(b, a, n_boot=200, seed=1)  # antisymmetric
    assert (r.low, r.high) == (pytest.approx(-d.high), pytest.approx(-d.low))


def test_verdict():
    assert verdict(Interval(0.05, 0.01, 0.09, 500), 500) == "resolved"
    assert verdict(Interval(-0.05, -0.09, -0.01, 500), 500) == "resolved"
    assert verdict(Interval(0.02, -0.01, 0.05, 200), 200) == "not resolved at n = 200"
    assert verdict((0.0, 0.04), 100) == "not resolved at n = 100"  # touching zero
    with pytest.raises(ValueError, match="out of order"):
        verdict((0.1, -0.1), 10)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="0/1"):
        accuracy_interval([0.5, 1])
    with pytest.raises(ValueError, match="n_boot"):
        accuracy_interval([1, 0], n_boot=0)
    with pytest.raises(ValueError, match="level"):
        accuracy_interval([1, 0], level=1.5)
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([1, 0], [1])


def _record(method, seed, preds, gold, ids=None, labels=False):
    ids = ids or [f"r{i}" for i in range(len(gold))]
    return {
        "target": "t",
        "method": method,
        "seed": seed,
        "uses_target_labels": labels,
        "predictions": {"id": ids, "pred": preds, "gold": gold, "n_options": [4] * len(gold)},
    }


def test_target_table_by_hand():
    gold = [0, 0, 0, 1, 2, 3]
    zs = [0, 1, 1, 1, 0, 0]  # 2 right (rows 0, 3)
    cast = [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]]  # 3 and 4 right
    icv = [0, 0, 0, 1, 2, 0]  # 5 right
    lora = [0, 0, 0, 1, 2, 3]  # 6 right but uses target labels
    records = [
        _record("zero_shot", 0, zs, gold),
        _record("cast", 0, cast[0], gold),
        _record("cast", 1, cast[1], gold),
        # JSON string form (flat records of results.json) and shuffled row order
        {**_record("icv", 0, icv[::-1], gold[::-1], ids=[f"r{i}" for i in range(6)][::-1])},
        _record("lora", 0, lora, gold, labels=True),
    ]
    records[3]["predictions"] = json.dumps(records[3]["predictions"])
    table = target_table(records, n_boot=300).set_index("method")
    assert table.loc["cast", "accuracy"] == pytest.approx(3.5 / 6)
    assert table.loc["cast", "runs"] == 2 and table.loc["cast", "n"] == 6
    assert table.loc["icv", "accuracy"] == pytest.approx(5 / 6)
    assert (table["majority_rate"] == 0.5).all() and (table["chance_rate"] == 0.25).all()
    assert (table["best_label_free"] == "icv").all()  # lora uses target labels, cast is the focus
    assert table.loc["cast", "vs_zero_shot_diff"] == pytest.approx(1.5 / 6)
    # McNemar stratified by seed against zero-shot's one run: seed 0 b=1, c=0 and seed 1
    # b=2, c=0, so B=3, C=0 and p = 2 / 2^3
    assert table.loc["cast", "vs_zero_shot_p_mcnemar"] == 0.25
    assert table.loc["cast", "vs_zero_shot_seeds"] == 2
    assert table.loc["cast", "vs_zero_shot_per_seed"] == "+0.167, +0.333"
    assert (
        table.loc["icv", "vs_zero_shot_p_mcnemar"]
        == mcnemar_exact(np.equal(icv, gold), np.equal(zs, gold)).p_value
    )
    assert table.loc["cast", "vs_best_label_free_diff"] == pytest.approx(3.5 / 6 - 5 / 6)
    assert table.loc["cast", "vs_zero_shot_verdict"] == "not resolved at n = 6"
    assert not table.loc["cast", "vs_zero_shot_resolved"]
    one_seed = "not resolved at n = 6; 1 seed: fit variance not measured"
    assert table.loc["icv", "vs_zero_shot_verdict"] == one_seed
    assert np.isnan(table.loc["zero_shot", "vs_zero_shot_diff"])
    # most-predicted-label shares: zero-shot 3/6 (0 and 1 three times each), icv 4/6 (0)
    assert table.loc["zero_shot", "top_label_share"] == pytest.approx(3 / 6)
    assert table.loc["icv", "top_label_share"] == pytest.approx(4 / 6)
    assert table.loc["cast", "top_label_share"] == pytest.approx(5 / 6)  # the larger of 4/6, 5/6
    assert not table["collapsed"].any()
    (line,) = stats.conclusions(table.reset_index())
    assert line.startswith("t (n = 6; majority 0.500, chance 0.250): cast 0.583 [")
    assert "; vs zero_shot +0.250 [" in line
    assert "over 2 seed(s), McNemar p = 0.25: not resolved at n = 6" in line
    assert "; vs icv -0.250 [" in line


def test_target_table_pools_per_source_runs_and_pairs_them_by_seed():
    """A method fitted once per source task has several runs per seed: its per-row correctness
    is the mean over all of them, and McNemar pairs each with the same seed's run."""
    gold = [0, 0, 0, 1]
    cast = {0: [0, 0, 0, 1], 1: [0, 0, 1, 1]}  # 4 and 3 right
    icl = {  # two sources x two seeds
        (0, "a"): [0, 1, 1, 1],
        (0, "b"): [0, 0, 1, 0],
        (1, "a"): [1, 1, 1, 1],
        (1, "b"): [0, 0, 0, 1],
    }
    records = [_record("zero_shot", 0, [1, 1, 1, 1], gold)]
    records += [_record("cast", s, p, gold) for s, p in cast.items()]
    records += [_record("cross_task_icl_random", s, p, gold) for (s, _), p in icl.items()]
    records += [_record("lora_target_dev", 0, [0, 0, 0, 0], gold, labels=True)]
    records += [_record("cast_target_dev", s, [0, 0, 0, 1], gold, labels=True) for s in (0, 1)]
    table = target_table(records, n_boot=200).set_index("method")
    assert table.loc["cross_task_icl_random", "runs"] == 4
    assert table.loc["cross_task_icl_random", "accuracy"] == pytest.approx((2 + 2 + 1 + 4) / 16)
    assert (table["best_label_free"] == "cross_task_icl_random").all()
    # one stratum per pair of runs with the same seed: cast seed 0 vs icl (0, a): b=2, c=0;
    # vs (0, b): b=2, c=0; seed 1 vs (1, a): b=2, c=0; vs (1, b): b=0, c=1 -> B=6, C=1
    pairs = [(np.equal(cast[s], gold), np.equal(p, gold)) for (s, _), p in icl.items()]
    test = mcnemar_stratified(pairs)
    assert (test.b, test.c, test.strata) == (6, 1, 4)
    assert test.p_value == 2 * (1 + 7) / 2**7
    assert table.loc["cast", "vs_best_label_free_p_mcnemar"] == test.p_value
    # the two-level interval pairs cast's seed s with the mean of icl's two runs of seed s
    want = [
        np.mean(np.equal(cast[s], gold)) - np.mean([np.equal(icl[s, x], gold) for x in "ab"])
        for s in (0, 1)
    ]
    assert table.loc["cast", "vs_best_label_free_per_seed"] == ", ".join(f"{x:+.3f}" for x in want)
    # the labelled-target group: cast_target_dev against the best method that reads target labels
    labelled = target_table(
        records, focus="cast_target_dev", baselines="target_labels", n_boot=200
    ).set_index("method")
    assert (labelled["best_target_labels"] == "lora_target_dev").all()
    assert labelled.loc["cast_target_dev", "vs_best_target_labels_diff"] == pytest.approx(0.25)
    lines = stats.conclusions(
        labelled.reset_index(), method="cast_target_dev", baselines="target_labels"
    )
    assert "; vs lora_target_dev (collapsed) +0.250 [" in lines[0]  # it predicts 0 for all
    with pytest.raises(ValueError, match="baselines must be one of"):
        target_table(records, baselines="best")


def test_target_table_refuses_unpaired_or_missing_predictions():
    gold = [0, 1]
    good = _record("zero_shot", 0, [0, 1], gold)
    other_rows = _record("cast", 0, [0, 1], gold, ids=["x", "y"])
    with pytest.raises(ValueError, match="other rows"):
        target_table([good, other_rows], n_boot=10)
    old = {"target": "t", "method": "cast", "seed": 0}
    with pytest.raises(ValueError, match="no per-example predictions"):
        target_table([good, old], n_boot=10)


# --------------------------------------------------------------------------- seeds


def _seeded_runs(diffs: list[float], n: int = 400, base: float = 0.5, seed: int = 0):
    """``[S, n]`` 0/1 correctness of a and b whose accuracies differ by ``diffs[s]`` in seed s
    (b the same in every seed)."""
    rng = np.random.default_rng(seed)
    b = (rng.random(n) < base).astype(float)
    a = []
    for d in diffs:
        row = b.copy()
        flip = rng.choice(n, size=int(round(abs(d) * n)), replace=False)
        row[flip] = 1.0 if d > 0 else 0.0  # flips that only move the accuracy one way
        want = int(round((b.mean() + d) * n))
        extra = [i for i in range(n) if row[i] == (0.0 if d > 0 else 1.0)]
        for i in extra[: max(0, abs(want - int(row.sum())))]:
            row[i] = 1.0 - row[i]
        a.append(row)
    return np.stack(a), b


def test_seeds_that_disagree_are_not_resolved():
    """Per-seed differences +0.15, -0.10, +0.15: pooling the seeds row by row and bootstrapping
    the rows calls the +0.067 resolved; counting the seeds does not."""
    a, b = _seeded_runs([0.15, -0.10, 0.15])
    pooled = paired_difference(a, b, n_boot=2000)
    assert verdict(pooled, pooled.n) == "resolved"  # what the seed-blind statistic said
    cmp = compare(a, b[None], [0, 1, 2], [None], n_boot=2000)
    assert cmp["seeds"] == 3 and cmp["per_seed"] == "+0.150, -0.100, +0.150"
    assert cmp["diff"] == pytest.approx(pooled.estimate)
    assert cmp["low"] < 0 < cmp["high"]
    assert cmp["verdict"] == "not resolved at n = 400" and not cmp["resolved"]
    # one seed of the same data: resolved, and it says what it did not measure
    one = compare(a[:1], b[None], n_boot=2000)
    assert one["resolved"] and one["verdict"] == "resolved; 1 seed: fit variance not measured"
    # seeds that agree are resolved
    agree = compare(*_seeded_runs([0.12, 0.10, 0.15], seed=1), n_boot=2000)
    assert agree["verdict"] == "resolved" and agree["low"] > 0


def test_two_level_interval_with_one_seed_is_the_row_bootstrap():
    rng = np.random.default_rng(2)
    a, b = (rng.random((2, 120)) < 0.5).astype(float)
    one = two_level_interval((a - b)[None], n_boot=700, seed=4)
    ref = paired_difference(a, b, n_boot=700, seed=4)
    assert (one.estimate, one.low, one.high, one.n, one.seeds) == (
        ref.estimate,
        ref.low,
        ref.high,
        ref.n,
        1,
    )


def test_two_level_interval_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    d = rng.integers(-1, 2, size=(3, 50)).astype(float)
    got = two_level_interval(d, n_boot=1500, seed=9)
    gen = np.random.default_rng(9)
    boots = []
    for start in range(0, 1500, 1000):
        size = min(1000, 1500 - start)
        seeds = gen.integers(0, 3, size=(size, 3))
        rows = gen.integers(0, 50, size=(size, 50))
        boots += [d[seeds[i]][:, rows[i]].mean() for i in range(size)]
    low, high = np.quantile(boots, [0.025, 0.975])
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert got.estimate == pytest.approx(d.mean()) and got.seeds == 3


def test_seed_differences_pairing():
    a = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], float)  # seeds 0, 0, 1, 1 (two sources)
    b = np.array([[0, 0], [1, 1]], float)  # seeds 1, 0
    d = seed_differences(a, b, [0, 0, 1, 1], [1, 0])
    assert d.tolist() == [[0.0, -0.5], [0.5, 0.0]]
    assert seed_differences(a[:1], b, [7], [1, 0]).tolist() == [[1, 0], [0, -1]]
    with pytest.raises(ValueError, match="cannot pair seeds"):
        seed_differences(a, b, [0, 1, 2, 3], [4, 5])


def test_stratified_mcnemar_is_the_cmh_test_over_matched_pairs():
    """statsmodels' Cochran-Mantel-Haenszel test with one 2x2 table (method x correct) per
    test row of each seed gives the stratified statistic (B - C)^2 / (B + C)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    rng = np.random.default_rng(0)
    pairs = [tuple((rng.random((2, 60)) < p).astype(int)) for p in (0.4, 0.5, 0.6)]
    got = mcnemar_stratified(pairs)
    tables = [
        np.array([[x, 1 - x], [y, 1 - y]])
        for a, b in pairs
        for x, y in zip(a, b, strict=True)
        if x != y  # a concordant row's table has a zero margin and adds nothing
    ]
    cmh = StratifiedTable(tables).test_null_odds(correction=False)
    assert got.statistic == pytest.approx(cmh.statistic, rel=1e-12)
    assert got.b == sum(int(((a == 1) & (b == 0)).sum()) for a, b in pairs)
    # one stratum: the exact McNemar test itself
    one = mcnemar_stratified([pairs[0]])
    assert one.p_value == mcnemar_exact(*pairs[0]).p_value
    with pytest.raises(ValueError, match="at least one stratum"):
        mcnemar_stratified([])


def test_seed_verdict_needs_interval_and_test():
    iv = Interval(0.05, 0.01, 0.09, 500)
    assert seed_verdict(iv, 0.01, 3) == "resolved"
    assert seed_verdict(iv, 0.2, 3) == "not resolved at n = 500"
    assert seed_verdict(Interval(0.02, -0.01, 0.05, 200), 0.001, 3) == "not resolved at n = 200"
    assert seed_verdict(iv, 0.01, 1) == "resolved; 1 seed: fit variance not measured"
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        seed_verdict(iv, 0.01, 0)


def test_top_label_share_and_collapse():
    assert top_label_share([2, 2, 1, 2]) == 0.75
    assert top_label_share(["neg"] * 99 + ["pos"]) == 0.99
    assert COLLAPSE_THRESHOLD == 0.9
    assert is_collapsed(0.91) and not is_collapsed(0.9) and is_collapsed(0.85, threshold=0.8)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        top_label_share([])
    with pytest.raises(ValueError, match="collapse threshold"):
        is_collapsed(0.5, threshold=1.0)
    gold = [0, 1] * 10
    records = [
        _record("zero_shot", 0, [0] * 19 + [1], gold),  # one label for 95% of rows
        _record("cast", 0, gold, gold),
    ]
    table = target_table(records, n_boot=50).set_index("method")
    assert table.loc["zero_shot", "top_label_share"] == 0.95
    assert table.loc["zero_shot", "collapsed"] and not table.loc["cast", "collapsed"]
    assert not target_table(records, n_boot=50, collapse_threshold=0.96)["collapsed"].any()
    (line,) = stats.conclusions(table.reset_index())
    assert "; vs zero_shot (collapsed) +0.450 [" in line


# --------------------------------------------------------------------------- records


def test_records_keep_compact_predictions(lm):
    import castlib.methods as methods
    from tests.conftest import make_task

    task = make_task("tgt", n_train=12, n_test=6, seed=2)
    method = methods.get("zero_shot")().fit(lm, [task], task, seed=0)
    rec = method.evaluate(lm, task, limit=5)
    preds = rec["predictions"]
    full = method.last_result.predictions
    assert preds["id"] == [p["id"] for p in full] == [ex.id for ex in task.test[:5]]
    assert [task.labels[i] for i in preds["pred"]] == [p["pred"] for p in full]
    assert preds["gold"] == [ex.label for ex in task.test[:5]]
    assert preds["n_options"] == [2] * 5
    assert np.mean(np.equal(preds["pred"], preds["gold"])) == rec["accuracy"]
    assert rec["prompt_format"] == "plain"
    # the most-predicted-label share, counted by hand from the predicted label words
    words = [p["pred"] for p in full]
    assert rec["top_label_share"] == max(words.count(w) for w in words) / 5
    json.dumps(rec)
    table = target_table([rec], n_boot=50)
    assert table.loc[0, "accuracy"] == rec["accuracy"] and table.loc[0, "n"] == 5
    assert table.loc[0, "top_label_share"] == rec["top_label_share"]


def test_chat_prompt_format_is_applied_and_recorded():
    import castlib
    import castlib.methods as methods
    from castlib.prompts import ChatTemplate, ZeroShot
    from castlib.testing import tiny_model, tiny_tokenizer
    from tests.conftest import make_task

    tok = tiny_tokenizer()
    lm = tiny_model("llama", tokenizer=tok)
    task = make_task("tgt", n_train=12, n_test=6, seed=2)
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        methods.get("zero_shot")(prompt_format="chatml")
    method = methods.get("zero_shot")(prompt_format="chat").fit(lm, [task], task, seed=0)
    with pytest.raises(ValueError, match="no chat template; use prompt_format='plain'"):
        method.evaluate(lm, task, limit=4)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    rec = method.evaluate(lm, task, limit=4)
    by_hand = castlib.evaluate(lm, task, prompt=ChatTemplate(ZeroShot(), tok), limit=4)
    plain = castlib.evaluate(lm, task, limit=4)
    assert rec["prompt_format"] == "chat" and rec["params"]["prompt_format"] == "chat"
    got = [p["log_probs"] for p in method.last_result.predictions]
    assert got == [p["log_probs"] for p in by_hand.predictions]
    assert got != [p["log_probs"] for p in plain.predictions]


def test_batch_aggregate_keeps_predictions_out_of_the_csv(tmp_path):
    import pandas as pd

    from castlib.repro import nbtools
    from castlib.repro import runs as R

    gold = [0, 1, 1, 0]
    for name, preds, seed in (("zero_shot", [0, 0, 1, 1], 0), ("cast", [0, 1, 1, 1], 0)):
        run_dir = tmp_path / f"02_cross_domain/{name}"
        rec = _record(name, seed, preds, gold)
        rec["accuracy"] = float(np.mean(np.equal(preds, gold)))
        nbtools.write_results([rec], run_dir)  # the notebooks' writer: flat records
        assert "predictions" not in pd.read_csv(run_dir / "results.csv").columns
        (run_dir / R.RUN_FILE).write_text(
            json.dumps({"status": "ok", "notebook": "02_cross_domain", "parameters": {"x": 1}})
        )
    summary = R.aggregate(tmp_path, figures=False)
    assert "predictions" not in summary.columns and len(summary) == 2
    assert "predictions" not in pd.read_csv(tmp_path / R.SUMMARY_FILE).columns
    first = (tmp_path / R.PREDICTIONS_FILE).read_bytes()
    R.aggregate(tmp_path, figures=False)
    assert (tmp_path / R.PREDICTIONS_FILE).read_bytes() == first  # reproducible bytes
    lines = R.load_predictions(tmp_path)
    assert {line["method"] for line in lines} == {"zero_shot", "cast"}
    assert all(line["predictions"]["gold"] == gold for line in lines)
    table = target_table(lines, n_boot=50).set_index("method")
    assert table.loc["cast", "accuracy"] == 0.75 and table.loc["zero_shot", "accuracy"] == 0.5
    assert table.loc["cast", "vs_zero_shot_diff"] == 0.25
    for path in tmp_path.rglob(R.RESULTS_FILE):  # records without predictions: no stale file
        data = json.loads(path.read_text())
        path.write_text(
            json.dumps([{k: v for k, v in r.items() if k != "predictions"} for r in data])
        )
    R.aggregate(tmp_path, figures=False)
    assert not (tmp_path / R.PREDICTIONS_FILE).exists()
    with pytest.raises(FileNotFoundError, match="aggregate the batch first"):
        R.load_predictions(tmp_path)
