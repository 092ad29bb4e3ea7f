"""The reproduction notebooks: structure (fast) and a papermill smoke run of every notebook
through `castlib.repro.runs` (``papermill_runs/smoke.yaml``, real model), checked on the aggregated
summary.csv -- structured results, never printed text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from castlib.repro import runs as R

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
SMOKE = REPO / "papermill_runs" / "smoke.yaml"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("0*_*.ipynb"))
EXPECTED = [
    "00_quickstart",
    "01_activation_patterns",
    "02_cross_domain",
    "03_cross_lingual",
    "04_ablations",
    "05_scalability_cost",
    "06_sensitivity",
    "07_transfer_vs_similarity",
]
# Method labels of 02_cross_domain's default `methods` parameter.
CROSS_DOMAIN_METHODS = {
    "zero_shot",
    "few_shot",
    "cross_task_icl_random",
    "cross_task_icl_similar",
    "task_vector",
    "icv",
    "function_vector",
    "i2cl",
    "lora_source",
    "lora_target_dev",
    "kasa_source",
    "kasa_target_dev",
    "cast",
    "cast_target_dev",
    "task_vector_target_dev",
    "icv_target_dev",
    "function_vector_target_dev",
}
# Methods of 05_scalability_cost's cost table (default `cost_methods` plus the m sweep).
COST_METHODS = {
    "zero_shot",
    "cross_task_icl",
    "cast",
    "task_vector",
    "icv",
    "function_vector",
    "i2cl",
    "lora_source",
    "kasa_source",
}


def test_every_notebook_has_one_parameters_cell_and_is_in_smoke_yaml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
        source = tagged[0].source
        for name in ("model", "device", "dtype", "data_dir", "output_dir"):
            assert f"\n{name} = " in f"\n{source}", f"{path.name}: no {name!r} parameter"
    monkeypatch.chdir(REPO)
    config = R.load_config(SMOKE)
    assert sorted(run.notebook.stem for run in config.runs) == EXPECTED


@pytest.fixture(scope="module")
def smoke_summary(tmp_path_factory: pytest.TempPathFactory, repo_data: Path) -> pd.DataFrame:
    """Run smoke.yaml into a temporary folder; return the summary.csv it aggregates to."""
    out = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the config names notebooks relative to the repository root
        config = dataclasses.replace(R.load_config(SMOKE), output_dir=out)
        outcomes = R.run_batch(config, progress=False)
    failed = {o.run.run_id: o.error for o in outcomes if o.status != "ok"}
    assert not failed, f"smoke runs failed: {failed}"
    R.aggregate(out)
    runs = pd.read_csv(out / R.RUNS_TABLE_FILE)
    assert (runs["status"] == "ok").all()
    for outcome in outcomes:
        run_dir = outcome.run.run_dir(out)
        assert (run_dir / R.RESULTS_FILE).is_file()
        assert list(run_dir.glob("*.png")), f"{outcome.run.run_id}: no figure written"
    return pd.read_csv(out / R.SUMMARY_FILE)


@pytest.mark.real_model
def test_smoke_summary(smoke_summary: pd.DataFrame) -> None:
    summary = smoke_summary
    for column in ("run_id", "notebook", "model", "method", "target", "accuracy"):
        assert column in summary.columns, f"summary.csv lacks {column!r}"
    stems = {Path(p).stem for p in summary["notebook"]}
    assert stems == set(EXPECTED), f"notebooks without result rows: {set(EXPECTED) - stems}"
    assert (summary["model"] == "gemma-3-270m").all()

    acc = summary["accuracy"].dropna()
    assert len(acc) >= 20
    assert acc.between(0.0, 1.0).all()
    with_acc = {Path(p).stem for p in summary.dropna(subset=["accuracy"])["notebook"]}
    assert with_acc == set(EXPECTED) - {"01_activation_patterns"}

    def rows(stem: str) -> pd.DataFrame:
        return summary[summary["notebook"].map(lambda p: Path(p).stem) == stem]

    cross = rows("02_cross_domain")
    assert set(cross["method"]) == CROSS_DOMAIN_METHODS
    assert len(cross) == len(CROSS_DOMAIN_METHODS)  # one target, one seed, one source
    assert cross["n"].eq(16).all()
    assert set(rows("00_quickstart")["method"]) == {"zero_shot", "cast"}
    assert rows("03_cross_lingual")["target"].str.startswith("sib200_").all()
    assert {"selection", "contrast", "layer_window", "norm_preserving"} <= set(
        rows("04_ablations")["ablation"]
    )
    cost = rows("05_scalability_cost")
    assert set(cost["method"]) == COST_METHODS
    adapters = cost[cost["method"].isin(["lora_source", "kasa_source"])]
    assert (adapters["trainable_params"] > 0).all()
    assert (cost.loc[cost["method"] == "cast", "trainable_params"] == 0).all()
    labelled = set(cross.loc[cross["uses_target_labels"].astype(bool), "method"])
    assert labelled == {m for m in CROSS_DOMAIN_METHODS if m.endswith("_target_dev")} | {"few_shot"}
    assert {"alpha", "layer", "m", "gamma"} <= set(rows("06_sensitivity")["param"])
    transfer = rows("07_transfer_vs_similarity")
    assert transfer["cosine"].between(-1.0, 1.0).all()
    assert transfer["gain"].between(-1.0, 1.0).all()

    analysis = rows("01_activation_patterns")
    assert analysis["layer"].nunique() == 18
    for column in ("cross_task_cosine", "ceiling", "floor"):
        assert analysis[column].dropna().between(-1.0, 1.0).all()
