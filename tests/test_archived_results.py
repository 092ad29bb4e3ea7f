"""The archived batch records in papermill_runs/results/ are well-formed and still match their config.

A record whose parameters no longer match the run of the same id in the config is stale: the
config changed after it was measured, and the archive must be rerun or removed.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from castlib import runs as R

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "papermill_runs" / "results"
RUN_FILES = sorted(ARCHIVE.glob("*/**/run.json"))


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda p: str(p.relative_to(ARCHIVE)))
def test_archived_run_is_ok_and_matches_its_config(
    run_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = json.loads(run_file.read_text())
    assert run["status"] == "ok"
    assert run["seconds"] > 0
    batch = run_file.relative_to(ARCHIVE).parts[0]
    monkeypatch.chdir(ROOT)
    config = R.load_config(ROOT / "papermill_runs" / f"{batch}.yaml")
    by_id = {r.run_id: r for r in config.runs}
    assert run["run_id"] in by_id, f"{run['run_id']} is not a run of {batch}.yaml"
    assert run["parameters"] == json.loads(json.dumps(by_id[run["run_id"]].parameters))

    records = json.loads((run_file.parent / R.RESULTS_FILE).read_text())
    records = records if isinstance(records, list) else [records]
    assert records
    for rec in records:
        acc = rec.get("accuracy")
        if acc is not None and not (isinstance(acc, float) and math.isnan(acc)):
            assert 0.0 <= acc <= 1.0, rec


def test_archive_has_records() -> None:
    assert RUN_FILES, "papermill_runs/results/ holds no archived run"


@pytest.mark.parametrize("batch", sorted(p.name for p in ARCHIVE.iterdir() if p.is_dir()))
def test_kept_aggregate_matches_the_records(batch: str, tmp_path: Path) -> None:
    """summary.csv and runs.csv kept beside the records are what aggregating the records gives."""
    kept = ARCHIVE / batch
    copy = tmp_path / batch
    shutil.copytree(kept, copy, ignore=shutil.ignore_patterns(R.FIGURES_DIR))
    # drop the kept aggregate from the copy, so that it is never compared with itself
    for name in (R.SUMMARY_FILE, R.RUNS_TABLE_FILE):
        (copy / name).unlink(missing_ok=True)
    R.aggregate(copy, figures=False)
    for name in (R.SUMMARY_FILE, R.RUNS_TABLE_FILE):
        assert (kept / name).is_file(), f"rebuild {batch}/{name} with --aggregate-only"
        pd.testing.assert_frame_equal(pd.read_csv(kept / name), pd.read_csv(copy / name))
