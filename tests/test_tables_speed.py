"""benchmarks.tables_speed: the config it runs and the report it computes (no runs here)."""

import json

import pytest

from benchmarks import tables_speed as ts


def test_batch_config_leaves_out_the_adapters(tmp_path):
    config = ts.batch_config("old")
    assert config["output_dir"] == str(ts.OUTPUTS / "old")
    seen = set()
    for run in config["runs"]:
        params = run["parameters"]
        for key in ("methods", "cost_methods"):
            if key in params:
                seen.add(key)
                assert not any(m.startswith(("lora", "kasa")) for m in params[key]), run["name"]
    assert seen == {"methods", "cost_methods"}


def _write(folder, side, run_id, wall, methods):
    path = folder / side / (run_id.replace("/", "__") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {m: {"fit_s": f, "eval_s": e, "n_records": 1} for m, (f, e) in methods.items()}
    path.write_text(json.dumps({"wall_s": wall, "methods": rows}))


def test_report_sums_units_done_on_both_sides(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "SUMMARIES", tmp_path)
    _write(tmp_path, "old", "02/a", 100.0, {"cast": (30.0, 30.0), "icv": (10.0, 10.0)})
    _write(tmp_path, "new", "02/a", 40.0, {"cast": (10.0, 5.0), "icv": (5.0, 5.0)})
    _write(tmp_path, "old", "02/b", 50.0, {"cast": (20.0, 20.0)})  # new side missing
    out = ts.report(["02/a", "02/b", "02/c"])
    assert out["units_done"] == ["02/a"]
    assert out["units_missing"] == ["02/b", "02/c"]
    assert out["methods"]["cast"]["speedup"] == pytest.approx(60.0 / 15.0)
    assert out["method_seconds"] == {"old": 80.0, "new": 25.0}
    assert out["method_speedup"] == pytest.approx(80.0 / 25.0)
    assert out["wall_speedup"] == pytest.approx(100.0 / 40.0)


def test_report_can_leave_methods_out_and_says_which_units_were_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "SUMMARIES", tmp_path)
    _write(tmp_path, "old", "02/a", 100.0, {"cast": (30.0, 30.0), "i2cl": (10.0, 10.0)})
    _write(tmp_path, "new", "02/a", 90.0, {"cast": (10.0, 5.0), "i2cl": (50.0, 5.0)})
    out = ts.report(["02/a"], exclude=["i2cl"])
    assert set(out["methods"]) == {"cast"}
    assert out["method_seconds"] == {"old": 60.0, "new": 15.0}
    # the runs' wall seconds lose the left-out method's seconds too
    assert out["wall_seconds"] == {"old": 80.0, "new": 35.0}
    assert out["units"]["02/a"] == {"old_wall_s": 80.0, "new_wall_s": 35.0, "new_fresh_store": True}
    # a summary that records a kept store says so
    path = tmp_path / "new" / "02__a.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "fresh_store": False}))
    assert ts.report(["02/a"])["units"]["02/a"]["new_fresh_store"] is False


def test_the_new_side_keeps_its_store_unless_asked(tmp_path, monkeypatch):
    """run_side empties the store only with fresh_store (the batch itself is not run here)."""
    monkeypatch.setattr(ts, "OUTPUTS", tmp_path)
    store = tmp_path / "new" / ts.R.STORE_FOLDER
    store.mkdir(parents=True)
    (store / "entry.bin").write_bytes(b"x" * 10)
    calls = []

    class _Done:
        returncode = 0

    monkeypatch.setattr(ts.subprocess, "run", lambda *a, **k: calls.append(a) or _Done())
    assert ts.run_side("new", "02/a") == []  # no run.json under tmp_path: nothing summarised
    assert (store / "entry.bin").is_file()
    assert ts._store_size(store) == {"files": 1, "bytes": 10}
    ts.run_side("new", "02/a", fresh_store=True)
    assert not store.exists()
    assert len(calls) == 2


def test_a_reloaded_fit_costs_nothing_in_the_sums():
    records = [
        {"method": "i2cl", "fit_seconds": 600.0, "eval_seconds": 20.0, "fit_reused_from": "sciq"},
        {"method": "cast", "fit_seconds": 40.0, "eval_seconds": 10.0, "accuracy": 0.5},
        {"method": "cast", "fit_seconds": 30.0, "eval_seconds": 10.0, "accuracy": 0.25},
    ]
    out = ts.method_seconds(records)
    assert out["i2cl"]["fit_s"] == 0.0 and out["i2cl"]["fits_reused"] == 1
    assert out["i2cl"]["eval_s"] == 20.0
    assert (out["cast"]["fit_s"], out["cast"]["eval_s"], out["cast"]["n_records"]) == (
        70.0,
        20.0,
        2,
    )
    assert out["cast"]["accuracy"] == [0.5, 0.25] and out["cast"]["fits_reused"] == 0


def test_markdown_table_has_a_row_per_method_and_the_totals(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "SUMMARIES", tmp_path)
    _write(tmp_path, "old", "02/a", 100.0, {"cast": (30.0, 30.0), "icv": (10.0, 10.0)})
    _write(tmp_path, "new", "02/a", 40.0, {"cast": (10.0, 5.0), "icv": (5.0, 5.0)})
    lines = ts.markdown(ts.report(["02/a"])).splitlines()
    assert lines[2] == "| cast | 60 | 15 | 4.00 |"
    assert lines[3] == "| icv | 20 | 10 | 2.00 |"
    assert lines[4] == "| all methods | 80 | 25 | **3.20** |"
    assert lines[5] == "| the runs' wall time | 100 | 40 | 2.50 |"
