"""benchmarks/dtype_check.py: a bfloat16 difference inside or outside its float32 interval."""

import json
from pathlib import Path

import numpy as np

from benchmarks import dtype_check


def _write(folder: Path, dtype: str, correct: dict[str, np.ndarray], unit: str) -> None:
    ids = [f"r{i}" for i in range(len(next(iter(correct.values()))))]
    recs = [
        {
            "dtype": dtype,
            "target": "t",
            "method": method,
            "seed": 0,
            "split": "test",
            "predictions": {"id": ids, "pred": [int(c) for c in ok], "gold": [1] * len(ids)},
        }
        for method, ok in correct.items()
    ]
    run = folder / "02_cross_domain" / unit
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(recs), encoding="utf-8")


def _case(tmp_path: Path, flip: int) -> Path:
    rng = np.random.default_rng(0)
    cast = rng.random(200) < 0.7
    zero = rng.random(200) < 0.5
    _write(tmp_path, "float32", {"cast": cast, "zero_shot": zero}, "fp32")
    moved = cast.copy()
    moved[np.flatnonzero(moved)[:flip]] = False  # bfloat16 loses `flip` of CAST's right rows
    _write(tmp_path, "bfloat16", {"cast": moved, "zero_shot": zero}, "bf16")
    return tmp_path


def test_a_small_bf16_change_is_inside_the_float32_interval(tmp_path, capsys):
    (row,) = dtype_check.checks(_case(tmp_path, flip=2))
    assert row.baseline == "zero_shot" and row.n == 200 and row.inside
    assert abs(row.candidate - (row.reference - 2 / 200)) < 1e-12
    assert dtype_check.main([str(tmp_path)]) == 0
    assert "| t | zero_shot | 0 | 200/200 (1.000) |" in capsys.readouterr().out


def test_a_large_bf16_change_fails_the_check(tmp_path, capsys):
    (row,) = dtype_check.checks(_case(tmp_path, flip=60))
    assert not row.inside and row.candidate < row.low
    assert dtype_check.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 bfloat16 differences inside" in out and "| t | cast | 0 | 140/200" in out


def test_records_of_one_dtype_only_are_refused(tmp_path, capsys):
    _write(tmp_path, "float32", {"cast": np.ones(5, bool), "zero_shot": np.ones(5, bool)}, "a")
    assert dtype_check.main([str(tmp_path)]) == 2
    assert "in both float32 and bfloat16" in capsys.readouterr().out


def test_a_float32_reference_elsewhere_counts_undated_records_only_when_told(tmp_path, capsys):
    rng = np.random.default_rng(1)
    cast, zero = rng.random(100) < 0.7, rng.random(100) < 0.5
    ref, cand = tmp_path / "ref", tmp_path / "cand"
    _write(ref, "float32", {"cast": cast, "zero_shot": zero}, "old")
    for path in ref.glob("**/results.json"):  # records made before they named their dtype
        recs = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps([{k: v for k, v in r.items() if k != "dtype"} for r in recs]))
    _write(cand, "bfloat16", {"cast": cast, "zero_shot": zero}, "new")
    assert dtype_check.checks(cand, reference=ref) == []
    (row,) = dtype_check.checks(cand, reference=ref, undated="float32")
    assert row.inside and row.candidate == row.reference
    assert dtype_check.main([str(cand), "--reference", str(ref), "--undated", "float32"]) == 0
    assert "1 of 1 bfloat16 differences inside" in capsys.readouterr().out
