"""castlib.repro.costs: seconds per notebook, model and method, from archived records."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from castlib.repro import costs
from castlib.repro.report import ArchivedConfig, archive_configs, load_archive


def _run(tmp_path, run_id, records):
    folder = tmp_path / run_id
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(records))
    return folder


def _cfg(tmp_path):
    rec = {"model": "m", "eval_seconds": 2.0}
    a = _run(
        tmp_path,
        "02_x/a",
        [
            {**rec, "method": "cast", "fit_seconds": 10.0},
            {**rec, "method": "i2cl", "fit_seconds": 30.0},
            {"method": "summary_row_without_seconds"},
        ],
    )
    b = _run(
        tmp_path,
        "02_x/b",
        [
            {**rec, "method": "cast", "fit_seconds": 12.0, "tune_seconds": 5.0},
            {
                **rec,
                "method": "i2cl",
                "fit_seconds": 30.0,
                "tune_seconds": 3.0,
                "fit_reused_from": "t",
            },
        ],
    )
    return ArchivedConfig(
        "cfg",
        tmp_path,
        pd.DataFrame(),
        None,
        {"02_x/a": a, "02_x/b": b},
        seconds={"02_x/a": 50.0, "02_x/b": 20.0},
    )


def test_costs_by_hand(tmp_path):
    table = costs.cost_table(_cfg(tmp_path)).set_index("method")
    # run b's CAST record times its tuning apart (5 of its 12 s); run a's does not
    assert table.loc["cast", "fit_seconds"] == 17.0
    assert table.loc["cast", "tune_seconds"] == 5.0
    assert table.loc["cast", "tuning_timed"] == 1
    assert table.loc["cast", "eval_seconds"] == 4.0
    # the reloaded fit counts 0 s; the one that made it counts its 30 s once
    assert table.loc["i2cl", "fit_seconds"] == 30.0
    assert table.loc["i2cl", "fits_reused"] == 1
    assert table.loc["i2cl", "records"] == 2
    assert table.loc["i2cl", "tune_seconds"] == 0.0  # the reloaded fit's choice cost nothing here
    assert pd.isna(table.loc[costs.OUTSIDE, "tune_seconds"])
    # run a: 50 - (12 + 32) = 6; run b: 20 - (14 + 2) = 4
    assert table.loc[costs.OUTSIDE, "eval_seconds"] == 10.0
    assert table["seconds"].sum() == 70.0  # the runs' wall time, all accounted for
    assert table["share"].sum() == pytest.approx(1.0)
    assert list(table["seconds"]) == sorted(table["seconds"], reverse=True)


def test_outside_time_never_negative(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.seconds["02_x/b"] = 1.0  # a resumed fit's record can exceed its run's wall time
    table = costs.cost_table(cfg).set_index("method")
    assert table.loc[costs.OUTSIDE, "eval_seconds"] == 6.0


def test_empty_archive_folder(tmp_path):
    cfg = ArchivedConfig("cfg", tmp_path, pd.DataFrame(), None)
    assert costs.cost_table(cfg).empty
    assert costs.method_shares(cfg).empty
    assert costs.main(["--archive", str(tmp_path / "none")]) == 1


@pytest.mark.parametrize("folder", archive_configs("papermill_runs/results"), ids=lambda p: p.name)
def test_archive_costs_account_for_the_wall_time(folder):
    cfg = load_archive(folder)
    table = costs.cost_table(cfg)
    assert not table.empty
    assert table["share"].sum() == pytest.approx(1.0)
    # every run's wall time is in the table (more only where a resumed fit's record counts
    # seconds of earlier, interrupted runs)
    assert table["seconds"].sum() >= sum(cfg.seconds.values()) - 1e-6
