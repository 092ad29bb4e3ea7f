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
