"""Main tables and claims that count the seeds and show collapse (issue 42), and the README's
generated claims section, on hand-built records and on the repository's archive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from castlib.repro import claims as C
from castlib.repro import results_md as MD
from castlib.repro.report import load_archive
from tests.test_report import synthetic  # noqa: F401  (the archived tiny batch)

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "papermill_runs" / "results"
CROSS = C.CLAIMS[2]  # 02_cross_domain


def _records(right: dict[str, list[list[int]]], target: str = "t", pred_of=None) -> list[dict]:
    """One record per (method, seed): ``right[method][seed]`` the 0/1 correctness per row;
    the gold answer is 0 everywhere and a wrong row predicts 1 (or ``pred_of(method, row)``)."""
    out = []
    for method, seeds in right.items():
        for seed, row in enumerate(seeds):
            pred = [0 if r else 1 for r in row]
            if pred_of is not None:
                pred = [pred_of(method, i, p) for i, p in enumerate(pred)]
            out.append(
                {
                    "run_id": f"nb/seed={seed}",
                    "target": target,
                    "method": method,
                    "seed": seed if len(seeds) > 1 else None,
                    "uses_target_labels": False,
                    "n": len(row),
                    "accuracy": float(np.mean(row)),
                    "predictions": {
                        "id": list(range(len(row))),
                        "pred": pred,
                        "gold": [0] * len(row),
                    },
                }
            )
    return out


def _flip(base: list[int], k: int, up: bool) -> list[int]:
    """``base`` with ``k`` rows changed in one direction (wrong -> right when ``up``)."""
    out, done = list(base), 0
    for i, x in enumerate(base):
        if done < k and x == (0 if up else 1):
            out[i], done = 1 - x, done + 1
    return out


def _disagreeing_seeds(n: int = 400) -> list[dict]:
    rng = np.random.default_rng(0)
    icv = [int(x) for x in rng.random(n) < 0.5]
    cast = [_flip(icv, 60, True), _flip(icv, 40, False), _flip(icv, 60, True)]
    zero = [int(x) for x in rng.random(n) < 0.3]
    return _records({"zero_shot": [zero], "cast": cast, "icv": [icv, icv, icv]})


def test_seeds_that_disagree_are_not_resolved_in_table_and_claim() -> None:
    """CAST beats icv by +0.15, -0.10, +0.15 in its three seeds: pooled row by row this was
    "resolved"; counted by seed it is not, in the table, the comparisons and the claim."""
    recs = _disagreeing_seeds()
    rows = pd.DataFrame(recs)
    main = C.main_table(rows, recs, n_boot=2000)
    comp = main.comparisons.set_index("versus").loc["best label-free"]
    assert comp["other"] == "icv" and comp["seeds"] == 3
    assert comp["per_seed"] == "+0.150, -0.100, +0.150"
    assert comp["low"] < 0 < comp["high"] and not comp["resolved"]
    assert main.table.loc[0, "CAST - best label-free"].endswith("not resolved at n = 400")
    assert main.table.loc[0, "seeds"] == 3
    text = C.claim_paragraph(CROSS, rows, recs, n_boot=2000)
    assert text.startswith("Not resolved")
    assert "Seeds per comparison: 3." in text
    # the same records with seeds that agree are resolved
    agree = [r for r in recs if r["method"] != "cast" or r["run_id"] != "nb/seed=1"]
    agree += [{**r, "seed": 1} for r in recs if r["method"] == "cast" and r["seed"] == 0]
    assert C.claim_paragraph(CROSS, pd.DataFrame(agree), agree, n_boot=2000).startswith("Supported")


def test_one_seed_says_the_fit_variance_was_not_measured() -> None:
    recs = _records({"zero_shot": [[1] * 20 + [0] * 80], "cast": [[1] * 90 + [0] * 10]})
    main = C.main_table(pd.DataFrame(recs), recs, n_boot=500)
    cell = main.table.loc[0, "CAST - zero-shot"]
    assert cell.endswith(": resolved; 1 seed: fit variance not measured")
    assert bool(main.comparisons["resolved"].iloc[0])
    text = C.claim_paragraph(C.CLAIMS[0], pd.DataFrame(recs), recs, n_boot=500)
    assert text.startswith("Supported")
    assert "Every comparison rests on one seed: the variance of the fit was not measured." in text


def test_collapsed_methods_are_marked_in_table_and_claim() -> None:
    """icl predicts label 1 for 95 of 100 rows: its accuracy is that label's share."""
    gold_share = [1] * 5 + [0] * 95

    def pred_of(method: str, row: int, pred: int) -> int:
        return 1 if method == "icl" and row >= 5 else pred

    recs = _records(
        {"zero_shot": [[1] * 50 + [0] * 50], "cast": [[1] * 60 + [0] * 40], "icl": [gold_share]},
        pred_of=pred_of,
    )
    rows = pd.DataFrame(recs)
    main = C.main_table(rows, recs, n_boot=300)
    row = main.table.iloc[0]
    assert row["collapsed (one label)"] == "icl 0.95"
    assert row["best label-free"].endswith("; top 0.95 collapsed")
    assert row["zero-shot"].endswith("; top 0.50")  # right rows predict 0, the rest 1
    assert list(main.collapsed["method"]) == ["icl"]
    text = C.claim_paragraph(CROSS, rows, recs, n_boot=300)
    assert "Collapsed (one label for more than 90% of rows" in text and "icl on t (0.95)" in text
    assert "The best label-free baseline is collapsed on t." in text
    raised = C.main_table(rows, recs, n_boot=300, collapse_threshold=0.96)
    assert raised.table.loc[0, "collapsed (one label)"] == "none"
    with pytest.raises(ValueError, match="collapse threshold"):
        C.main_table(rows, recs, collapse_threshold=1.5)


def test_mean_std_tables_show_recorded_shares() -> None:
    rows = pd.DataFrame(
        [
            {
                "run_id": f"r{s}",
                "target": "t",
                "method": m,
                "seed": s,
                "n": 10,
                "accuracy": a,
                "top_label_share": share,
            }
            for s in (0, 1)
            for m, a, share in (("zero_shot", 0.5, 0.6), ("cast", 0.5, 0.7), ("icv", 0.4, 0.97))
        ]
    )
    main = C.main_table(rows, None)
    assert main.table.loc[0, "best label-free"] == "icv: 0.400 +- 0.000; top 0.97 collapsed"
    assert main.table.loc[0, "collapsed (one label)"] == "icv 0.97"
    assert "not testable" in main.comparisons["verdict"].iloc[0]


@pytest.mark.parametrize(
    ("paragraph", "label"),
    [
        ("Supported: CAST beats zero-shot on every target, resolved.", "Supported"),
        ("Supported by the means: CAST's default ...", "Supported by the means"),
        ("Partly supported: CAST beats ...", "Partly supported"),
        (
            "Not supported by notebook 01's measure: across ...",
            "Not supported by notebook 01's measure",
        ),
        ("Not resolved: no difference ...", "Not resolved"),
        (
            "Undecided from these records (means over seeds only). CAST's ...",
            "Undecided from these records (means over seeds only)",
        ),
        ("No archived run of this notebook: not evaluated.", "Not evaluated"),
        ("Not evaluated: ICL fits the context at no m.", "Not evaluated"),
        ("Over this notebook's 3 CAST record(s), CAST's mean accuracy 0.3 above ...", "Not judged"),
    ],
)
def test_verdict_label(paragraph: str, label: str) -> None:
    assert C.verdict_label(paragraph) == label


def test_claims_block_from_synthetic_archive(synthetic, tmp_path: Path) -> None:  # noqa: F811
    text = MD.claims_markdown(synthetic["archive"], root=synthetic["root"], n_boot=300)
    (line,) = [x for x in text.splitlines() if "| 02_cross_domain" in x]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:6] == ["02_cross_domain", "`synth`", "tiny", "60", "1"]
    assert cells[6] in C.VERDICTS or cells[6].split(" ")[0] in {"Supported", "Not", "Partly"}
    assert "No archived run (not evaluated): 00_quickstart, 01_activation_patterns" in text
    # a README with the main-tables markers only: the claims block goes after them
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{MD.BEGIN}\nold\n{MD.END}\n\n## Next\n", encoding="utf-8")
    archive = ["--archive", str(synthetic["archive"]), "--n-boot", "300"]
    assert MD.main([*archive, "--readme", str(readme), "--check"]) == 1
    assert MD.main([*archive, "--readme", str(readme)]) == 0
    new = readme.read_text(encoding="utf-8")
    assert new.index(MD.END) < new.index(MD.CLAIMS_HEADING) < new.index(MD.CLAIMS_BEGIN)
    assert new.index(MD.CLAIMS_END) < new.index("## Next")
    assert line in new
    assert MD.main([*archive, "--readme", str(readme), "--check"]) == 0
    assert MD.main([*archive, "--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == new  # idempotent


def test_claims_block_from_the_repository_archive() -> None:
    """Every row names its model, n, seeds and verdict, as claim_verdict computes them from
    the archived records (the README's block is checked against the same function by
    tests/test_report.py::test_readme_main_tables_match_the_archive)."""
    text = MD.claims_markdown(ARCHIVE, n_boot=200)
    table = [x for x in text.splitlines() if x.startswith("| ") and "notebook" not in x]
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in table]
    configs = {(c[2], c[3]) for c in cells}
    assert ("`full_cpu`", "gemma-3-270m") in configs
    assert ("`qwen_cpu`", "qwen2.5-coder-1.5b") in configs
    assert not any("full_cpu_200rows" in c[2] for c in cells)  # superseded
    cfg = load_archive(ARCHIVE / "qwen_cpu", ROOT)
    s = cfg.summary
    rows = s[s["notebook"].map(C.notebook_stem) == "02_cross_domain"]
    want = C.claim_verdict(CROSS, rows, cfg.predictions, n_boot=200)
    (got,) = [c for c in cells if c[1] == "02_cross_domain" and c[2] == "`qwen_cpu`"]
    assert got[4:7] == [want.n, str(want.seeds), want.verdict] == ["500", "1", got[6]]
    full = [c for c in cells if c[1] == "02_cross_domain" and c[2] == "`full_cpu`"]
    assert full[0][4:6] == ["500", "3"]


def test_archive_nusax_jav_is_not_resolved_once_seeds_count() -> None:
    """The issue's example: CAST - LoRA (source) on nusax_senti_jav differs by about -0.05,
    -0.01 and -0.17 across seeds; pooled it was printed as resolved."""
    cfg = load_archive(ARCHIVE / "full_cpu", ROOT)
    s = cfg.summary
    rows = s[s["notebook"].map(C.notebook_stem) == "03_cross_lingual"]
    main = C.main_table(rows, cfg.predictions, n_boot=2000)
    comps = main.comparisons.set_index(["target", "versus"])
    jav = comps.loc[("nusax_senti_jav", "best label-free")]
    assert jav["other"] == "lora_source" and jav["seeds"] == 3
    assert jav["low"] < 0 < jav["high"] and not jav["resolved"]
    per_seed = [float(x) for x in jav["per_seed"].split(", ")]
    assert max(per_seed) - min(per_seed) > 0.1


def _layer_rows(supported: list[object] | None) -> pd.DataFrame:
    rows = [
        {
            "analysis": "layer",
            "layer": layer,
            "cross_task_cosine": 0.5,
            "ceiling": 0.9,
            "floor": 0.03,
            "target": "a+b+c",
        }
        for layer in range(4)
    ]
    if supported is not None:
        for row, value in zip(rows, supported, strict=True):
            row["supported"] = value
    return pd.DataFrame(rows)


def test_consistency_is_judged_against_the_placebos_not_the_floor() -> None:
    # every layer is far above the random floor: that alone decides nothing
    old = C._consistency_paragraph(_layer_rows(None))
    assert C.verdict_label(old) == "Not evaluated"
    assert "cannot fail" in old
    none = C._consistency_paragraph(_layer_rows([False] * 4))
    assert none.startswith("Not supported at any of 4 layers")
    some = C._consistency_paragraph(_layer_rows([False, True, True, False]))
    assert some.startswith("Supported at layers [1, 2] (2 of 4)")
    assert C.verdict_label(some) == "Supported at layers [1, 2] (2 of 4)"
