"""Tests for castlib.repro.runs: config expansion, validation, papermill batch, resume and aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from castlib.repro import runs as R
from castlib.repro.runs import cli as runs_cli
from castlib.repro.runs import config as runs_config
from castlib.repro.runs import execute as runs_execute


def make_notebook(path: Path, *, fail_on: int | None = None) -> Path:
    """A tiny parameterised notebook writing results.json (raising when x == fail_on)."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'x = 1\noutput_dir = "."\n'
        "# declared for the config tests; unused here\n"
        'n: int = 1\nseed = 0\nmodel = ""\nalpha, flag = 1.0, False\ntasks = []'
    )
    params.metadata["tags"] = ["parameters"]
    body = "import json, pathlib\n"
    if fail_on is not None:
        body += f'if x == {fail_on}:\n    raise ValueError(f"boom at x={{x}}")\n'
    body += (
        'records = [{"method": "a", "accuracy": x / 10}]\n'
        'pathlib.Path(output_dir, "results.json").write_text(json.dumps(records))\n'
    )
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def kernel_name() -> str:
    """The native Python kernel (the running interpreter, via ipykernel)."""
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager

    if NATIVE_KERNEL_NAME not in KernelSpecManager().find_kernel_specs():
        pytest.skip(f"no {NATIVE_KERNEL_NAME!r} kernelspec available")
    return NATIVE_KERNEL_NAME


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_notebook(tmp_path / "nbs" / "good.ipynb")
    make_notebook(tmp_path / "nbs" / "bad.ipynb", fail_on=2)
    return tmp_path


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- expansion


def test_grid_expansion_and_ids(workdir: Path) -> None:
    cfg = R.parse_config(
        {
            "output_dir": "out",
            "defaults": {"n": 5, "seed": 99},
            "runs": [
                {
                    "notebook": "nbs/good.ipynb",
                    "parameters": {"model": "org/gemma-3-270m"},
                    "grid": {"alpha": [4.0, 8], "seed": [0, 1], "flag": [True]},
                },
                {"notebook": "nbs/bad.ipynb", "name": "solo", "parameters": {"x": 3}},
            ],
        }
    )
    assert cfg.output_dir == (workdir / "out").resolve()
    ids = [r.run_id for r in cfg.runs]
    assert ids == [
        "good/alpha=4.0__seed=0__flag=true",
        "good/alpha=4.0__seed=1__flag=true",
        "good/alpha=8__seed=0__flag=true",
        "good/alpha=8__seed=1__flag=true",
        "solo/default",
    ]
    first = cfg.runs[0]
    assert first.notebook == (workdir / "nbs" / "good.ipynb").resolve()
    assert first.parameters == {
        "n": 5,
        "seed": 0,
        "model": "org/gemma-3-270m",
        "alpha": 4.0,
        "flag": True,
    }
    assert first.grid == {"alpha": 4.0, "seed": 0, "flag": True}
    assert first.run_dir(cfg.output_dir) == cfg.output_dir / "good" / "alpha=4.0__seed=0__flag=true"
    assert cfg.runs[-1].parameters == {"n": 5, "seed": 99, "x": 3}
    # deterministic
    again = R.parse_config({"output_dir": "out", "runs": [{"notebook": "nbs/good.ipynb"}]})
    assert [r.run_id for r in again.runs] == ["good/default"]


def test_ids_safe_long_and_unique(workdir: Path) -> None:
    cfg = R.parse_config(
        {
            "output_dir": "out",
            "runs": [
                {"notebook": "nbs/good.ipynb", "grid": {"model": ["a/b c", "a_b c"]}},
                {"notebook": "nbs/good.ipynb", "grid": {"tasks": [["x" * 30] * 4]}},
                # same notebook, no grid, different fixed parameters -> hashed, distinct ids
                {"notebook": "nbs/bad.ipynb", "parameters": {"x": 1}},
                {"notebook": "nbs/bad.ipynb", "parameters": {"x": 3}},
            ],
        }
    )
    ids = [r.run_id for r in cfg.runs]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        assert all(part and not part.startswith(".") for part in run_id.split("/"))
        assert all(c.isalnum() or c in "._+-=/" for c in run_id), run_id
        assert len(run_id.split("/")[1]) <= runs_config.MAX_ID_PART
    # "a/b c" and "a_b c" sanitise alike: both get a hash suffix
    assert ids[0].startswith("good/model=a_b_c__") and ids[1].startswith("good/model=a_b_c__")
    assert (
        ids[2].startswith("good/tasks=x") and len(ids[2].split("/")[1]) == runs_config.MAX_ID_PART
    )
    assert ids[3].startswith("bad/default__") and ids[4].startswith("bad/default__")
    # stable across parses
    cfg2 = R.parse_config(
        {
            "output_dir": "out",
            "runs": [
                {"notebook": "nbs/bad.ipynb", "parameters": {"x": 1}},
                {"notebook": "nbs/bad.ipynb", "parameters": {"x": 3}},
            ],
        }
    )
    assert [r.run_id for r in cfg2.runs] == ids[3:]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"output_dir": "o", "runs": [{"notebook": "nbs/missing.ipynb"}]}, "notebook not found"),
        (
            {"output_dir": "o", "runs": [{"notebook": "nbs/good.ipynb", "grid": {"x": 3}}]},
            "grid values must be a list",
        ),
        ({"output_dir": "o", "run": [{"notebook": "nbs/good.ipynb"}]}, "unknown key 'run'"),
        (
            {"output_dir": "o", "runs": [{"notebook": "nbs/good.ipynb", "grdi": {}}]},
            "did you mean 'grid'",
        ),
        ({"output_dir": "o", "runs": []}, "at least one run"),
        ({"output_dir": "o"}, "at least one run"),
        ({"runs": [{"notebook": "nbs/good.ipynb"}]}, "missing required key 'output_dir'"),
        (
            {"output_dir": "o", "runs": [{"notebook": "nbs/good.ipynb", "grid": {"x": [1, 1]}}]},
            "duplicate run id 'good/x=1'",
        ),
        (
            {"output_dir": "o", "runs": [{"notebook": "nbs/good.ipynb"}] * 2},
            "duplicate run id",
        ),
        (
            {"output_dir": "o", "runs": [{"notebook": "nbs/good.ipynb", "grid": {"x": []}}]},
            "must not be empty",
        ),
        (
            {
                "output_dir": "o",
                "runs": [{"notebook": "nbs/good.ipynb", "parameters": {"output_dir": 1}}],
            },
            "set by the runner",
        ),
        (
            {
                "output_dir": "o",
                "defaults": {"not-valid": 1},
                "runs": [{"notebook": "nbs/good.ipynb"}],
            },
            "not a Python identifier",
        ),
        (
            {
                "output_dir": "o",
                "runs": [
                    {"notebook": "nbs/good.ipynb", "parameters": {"x": 1}, "grid": {"x": [2]}}
                ],
            },
            "both in 'parameters' and 'grid'",
        ),
    ],
)
def test_validation_errors(workdir: Path, config: dict, message: str) -> None:
    with pytest.raises(R.ConfigError, match=message):
        R.parse_config(config)


def test_notebook_parameters_reads_the_tagged_cell(workdir: Path) -> None:
    declared = R.notebook_parameters(workdir / "nbs" / "good.ipynb")
    assert declared == {"x", "output_dir", "n", "seed", "model", "alpha", "flag", "tasks"}


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("defaults", "'sed' is not a parameter of good.ipynb \\(did you mean 'seed'\\?\\)"),
        ("parameters", "'sed' is not a parameter of good.ipynb"),
        ("grid", "'sed' is not a parameter of good.ipynb"),
    ],
)
def test_undeclared_parameter_is_rejected(workdir: Path, where: str, message: str) -> None:
    """A misspelt name would otherwise run silently with the notebook's default."""
    entry: dict = {"notebook": "nbs/good.ipynb"}
    config: dict = {"output_dir": "o", "runs": [entry]}
    if where == "defaults":
        config["defaults"] = {"sed": 1}
    elif where == "parameters":
        entry["parameters"] = {"sed": 1}
    else:
        entry["grid"] = {"sed": [1, 2]}
    with pytest.raises(R.ConfigError, match=message):
        R.parse_config(config)


def test_notebook_without_parameters_cell(workdir: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, workdir / "nbs" / "plain.ipynb")
    with pytest.raises(R.ConfigError, match="no cell tagged 'parameters'"):
        R.parse_config(
            {"output_dir": "o", "runs": [{"notebook": "nbs/plain.ipynb", "grid": {"x": [2]}}]}
        )
    # without parameters there is nothing to inject, so nothing to check
    cfg = R.parse_config({"output_dir": "o", "runs": [{"notebook": "nbs/plain.ipynb"}]})
    assert [r.run_id for r in cfg.runs] == ["plain/default"]


def test_unparseable_parameters_cell_warns(workdir: Path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("%matplotlib inline\nx = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, workdir / "nbs" / "magic.ipynb")
    with pytest.warns(UserWarning, match="not plain Python"):
        cfg = R.parse_config(
            {"output_dir": "o", "runs": [{"notebook": "nbs/magic.ipynb", "grid": {"y": [2]}}]}
        )
    assert cfg.runs[0].parameters == {"y": 2}


@pytest.mark.parametrize(
    "config",
    sorted((Path(__file__).parents[1] / "papermill_runs").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs_are_valid(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shipped config parses, finds its notebooks and names only declared parameters."""
    monkeypatch.chdir(config.parents[1])
    cfg = R.load_config(config)
    assert cfg.runs and len({r.run_id for r in cfg.runs}) == len(cfg.runs)


def test_method_groups_cover_every_label_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config that splits a target's labels into method groups (one run each, to fit a
    session: qwen_cpu.yaml) runs every label that full_cpu.yaml runs, but the adapters, exactly
    once per target, so the archive pairs every method with every other."""
    from castlib.repro import nbtools

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)
    full = R.load_config(root / "papermill_runs" / "full_cpu.yaml")
    qwen = R.load_config(root / "papermill_runs" / "qwen_cpu.yaml")
    adapters = {"lora_source", "kasa_source", "lora_target_dev", "kasa_target_dev"}
    for notebook in ("02_cross_domain", "03_cross_lingual"):
        (labels,) = {
            frozenset(nbtools.expand_methods(run.parameters["methods"])) - adapters
            for run in full.runs
            if run.run_id.startswith(notebook)
        }
        groups: dict[str, list[str]] = {}
        for run in qwen.runs:
            if run.run_id.startswith(notebook):
                unit = run.run_id.split("__methods=")[0]
                groups.setdefault(unit, []).extend(run.parameters["methods"])
        assert groups, notebook
        for unit, methods in groups.items():
            assert sorted(methods) == sorted(labels), unit


def test_superseded_config_is_parsed_unchecked_and_refused_to_run(workdir: Path) -> None:
    """A superseded config keeps naming parameters today's notebook no longer declares (the
    record of an old archive): it parses, and running it is refused by both executors."""
    data = {
        "output_dir": "o",
        "superseded": "by new.yaml; made by commit abc1234",
        "runs": [{"notebook": "nbs/good.ipynb", "parameters": {"gone": 1}}],
    }
    with pytest.raises(R.ConfigError, match="'gone' is not a parameter"):
        R.parse_config({k: v for k, v in data.items() if k != "superseded"})
    cfg = R.parse_config(data)
    assert cfg.superseded and cfg.runs[0].parameters == {"gone": 1}
    with pytest.raises(R.ConfigError, match="superseded.*commit abc1234"):
        R.run_batch(cfg, progress=False)
    from castlib.repro.runs.ray_executor import run_batch_ray

    with pytest.raises(R.ConfigError, match="superseded"):
        run_batch_ray(cfg, progress=False)
    assert not (workdir / "o").exists()
    with pytest.raises(R.ConfigError, match="non-empty string"):
        R.parse_config({**data, "superseded": ""})


def test_cli_config_error_exit_code(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(workdir / "c.yaml", {"output_dir": "o", "runs": []})
    assert runs_cli.main([str(path)]) == 2
    assert "at least one run" in capsys.readouterr().err


def test_notebook_found_next_to_config(workdir: Path) -> None:
    path = write_config(
        workdir / "nbs" / "c.yaml", {"output_dir": "o", "runs": [{"notebook": "good.ipynb"}]}
    )
    cfg = R.load_config(path)
    assert cfg.runs[0].notebook == (workdir / "nbs" / "good.ipynb").resolve()


# ----------------------------------------------------------------------------- execution


def test_batch_failure_resume_force_aggregate(
    workdir: Path, kernel_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        workdir / "runs.yaml",
        {
            "output_dir": "out",
            "runs": [
                {"notebook": "nbs/good.ipynb", "grid": {"x": [1, 3]}},
                {"notebook": "nbs/bad.ipynb", "grid": {"x": [1, 2]}},
            ],
        },
    )
    out = workdir / "out"
    args = [str(config), "--kernel", kernel_name, "--no-progress"]

    assert runs_cli.main([*args, "--dry-run"]) == 0
    assert "good/x=1" in capsys.readouterr().out
    assert not out.exists() or not any(out.rglob("run.json"))

    # first batch: the bad x=2 run fails, the others still run; exit code is nonzero
    assert runs_cli.main(args) == 1
    status = {
        p.parent.relative_to(out).as_posix(): json.loads(p.read_text())
        for p in out.rglob("run.json")
    }
    assert sorted(status) == ["bad/x=1", "bad/x=2", "good/x=1", "good/x=3"]
    assert {k: v["status"] for k, v in status.items()} == {
        "bad/x=1": "ok",
        "bad/x=2": "failed",
        "good/x=1": "ok",
        "good/x=3": "ok",
    }
    failed = status["bad/x=2"]
    assert failed["error"]["type"] == "ValueError"
    assert "boom at x=2" in failed["error"]["message"]
    assert failed["error"]["cell"]["index"] is not None
    assert failed["parameters"] == {"x": 2}
    assert failed["seconds"] >= 0 and failed["started"] <= failed["finished"]
    assert (out / "bad" / "x=2" / "bad.ipynb").is_file()
    assert not (out / "bad" / "x=2" / "results.json").exists()
    assert status["good/x=3"]["parameters"] == {"x": 3}

    # aggregation done by the batch
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3
    assert {"run_id", "notebook", "x", "method", "accuracy"} <= set(summary.columns)
    acc = dict(zip(summary["run_id"], summary["accuracy"], strict=True))
    assert acc == pytest.approx({"good/x=1": 0.1, "good/x=3": 0.3, "bad/x=1": 0.1})
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 4
    assert {"run_id", "notebook", "status", "seconds", "error"} <= set(table.columns)
    row = table.set_index("run_id").loc["bad/x=2"]
    assert row["status"] == "failed" and "boom" in row["error"]
    assert row["error_cell"] == failed["error"]["cell"]["index"]
    assert "error_cell,x" in (out / "runs.csv").read_text().splitlines()[0]
    assert ",2,2\n" in (out / "runs.csv").read_text()  # cell index written as an integer
    # one set of figures per notebook, never pooled; x varies only within "good"
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "bad_accuracy_by_method.png",
        "good_accuracy_by_method.png",
        "good_accuracy_by_x.png",
    ]

    # resume: finished runs are skipped (run.json untouched)
    good = sorted((out / "good").rglob("run.json"))
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in good}
    assert runs_cli.main([*args, "--only", "good/"]) == 0
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in good} == before
    assert "0 ok, 0 failed, 2 skipped" in capsys.readouterr().out

    # --force reruns the selected run only
    assert runs_cli.main([*args, "--only", "good/x=3", "--force"]) == 0
    x3 = out / "good" / "x=3" / "run.json"
    assert x3.read_text() != before[x3]
    x1 = out / "good" / "x=1" / "run.json"
    assert x1.read_text() == before[x1][1]


def test_run_with_changed_parameters_is_not_complete(workdir: Path) -> None:
    run = R.Run(workdir / "nbs" / "good.ipynb", {"x": 1}, "good/x=1", {"x": 1}, "nbs/good.ipynb")
    run_dir = run.run_dir(workdir / "out")
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("[]")
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "parameters": {"x": 1}}))
    assert R.is_complete(run, workdir / "out")
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "parameters": {"x": 5}}))
    assert not R.is_complete(run, workdir / "out")
    (run_dir / "run.json").write_text(json.dumps({"status": "failed", "parameters": {"x": 1}}))
    assert not R.is_complete(run, workdir / "out")


# ----------------------------------------------------------------------------- aggregation


def _fake_run(out: Path, run_id: str, params: dict, records: object, status: str = "ok") -> None:
    run_dir = out / run_id
    run_dir.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "notebook": "nbs/x.ipynb",
        "status": status,
        "parameters": params,
        "seconds": 1.5,
        "error": None if status == "ok" else {"type": "E", "message": "m"},
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    if records is not None:
        (run_dir / "results.json").write_text(json.dumps(records))


def test_aggregate_only_columns_and_collisions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    recs = [
        {"method": "cast", "target": "t1", "accuracy": 0.5},
        {"method": "zero", "target": "t1", "accuracy": 0.25},
    ]
    _fake_run(out, "nb/seed=0", {"seed": 0, "method": "ignored", "layers": [1, 2]}, recs)
    _fake_run(out, "nb/seed=1", {"seed": 1, "method": "ignored", "layers": [1, 2]}, recs[:1])
    _fake_run(out, "nb/seed=2", {"seed": 2}, [{"method": "cast"}], status="failed")
    assert runs_cli.main(["--aggregate-only", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3
    assert list(summary.columns[:2]) == ["run_id", "notebook"]
    assert {"seed", "param_method", "layers", "method", "target", "accuracy"} <= set(
        summary.columns
    )
    assert set(summary["param_method"]) == {"ignored"}
    assert set(summary["method"]) == {"cast", "zero"}
    assert summary["layers"].iloc[0] == "[1, 2]"
    table = pd.read_csv(out / "runs.csv")
    assert list(table["status"]) == ["ok", "ok", "failed"]
    assert table["error"].fillna("").tolist() == ["", "", "E: m"]
    assert (out / "figures" / "accuracy_by_target_method.png").is_file()
    assert (out / "figures" / "accuracy_by_seed.png").is_file()


def test_aggregate_without_metric_skips_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_run(out, "nb/default", {}, {"loss": 1.0})  # one record as a bare object
    df = R.aggregate(out)
    assert df[["run_id", "loss"]].values.tolist() == [["nb/default", 1.0]]
    assert not (out / "figures").exists()


def test_plot_summary_skips_grid_columns_that_only_group_methods(tmp_path: Path) -> None:
    rows = [
        {"notebook": "nb.ipynb", "target": t, "method": m, "methods": g, "n_tune": n, "accuracy": a}
        for t in ("t1", "t2")
        for (m, g) in (("cast", '["cast", "zero"]'), ("zero", '["cast", "zero"]'), ("i2cl", "i"))
        for n, a in ((16, 0.25), (32, 0.5))
    ]
    written = R.plot_summary(pd.DataFrame(rows), tmp_path / "f", parameters=["methods", "n_tune"])
    # "methods" is a function of "method" (a run group): no plot by it; n_tune is a real axis
    assert [p.name for p in written] == [
        "accuracy_by_target_method.png",
        "accuracy_by_n_tune.png",
    ]
    assert all(p.stat().st_size > 0 for p in written)


def test_aggregate_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        R.aggregate(tmp_path / "nope")
    assert runs_cli.main(["--aggregate-only", str(tmp_path / "nope")]) == 2


def test_run_without_results_counts_as_failed(workdir: Path, kernel_name: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('output_dir = "."\nprint("no results")')]
    nbformat.write(nb, workdir / "nbs" / "nores.ipynb")
    cfg = R.parse_config({"output_dir": "out", "runs": [{"notebook": "nbs/nores.ipynb"}]})
    (outcome,) = R.run_batch(cfg, kernel_name=kernel_name, progress=False)
    assert outcome.status == "failed" and "MissingResultsError" in outcome.error
    record = json.loads((workdir / "out" / "nores" / "default" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"]["cell"] is None


def test_default_kernel_is_the_running_interpreter_whatever_the_user_has(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user-wide ``python3`` kernel spec that points elsewhere (what ``ipykernel install
    --user`` leaves behind) must not capture a batch: runs execute in this interpreter."""
    import sys

    pytest.importorskip("ipykernel")
    user_dir = workdir / "jupyter_user"
    spec_dir = user_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    bogus = {"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]}
    (spec_dir / "kernel.json").write_text(
        json.dumps({**bogus, "display_name": "x", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(user_dir))
    monkeypatch.delenv("CASTLIB_ACTIVATION_STORE", raising=False)
    monkeypatch.delenv("CASTLIB_FIT_STORE", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('output_dir = "."', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, os, pathlib, sys\n"
            'store = os.environ.get("CASTLIB_ACTIVATION_STORE")\n'
            'fits = os.environ.get("CASTLIB_FIT_STORE")\n'
            'pathlib.Path(output_dir, "results.json").write_text(json.dumps('
            '[{"method": "a", "accuracy": 1.0, "python": sys.executable, "store": store,'
            ' "fits": fits}]))'
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, workdir / "nbs" / "env.ipynb")
    cfg = R.parse_config({"output_dir": "out", "runs": [{"notebook": "nbs/env.ipynb"}]})
    (outcome,) = R.run_batch(cfg, progress=False)
    assert outcome.status == "ok", outcome.error
    run_dir = workdir / "out" / "env" / "default"
    (result,) = json.loads((run_dir / "results.json").read_text())
    assert result["python"] == sys.executable
    # every kernel of a batch shares one activation store, and the runner's env is restored
    assert result["store"] == str((workdir / "out" / R.STORE_FOLDER).resolve())
    assert result["fits"] is None  # no fit_store key: the store's own fits/ folder
    assert "CASTLIB_ACTIVATION_STORE" not in __import__("os").environ
    # a fit_store key points the kernels at that folder (kept apart from the output folder)
    cfg = R.parse_config(
        {"output_dir": "out2", "fit_store": "kept/fits", "runs": [{"notebook": "nbs/env.ipynb"}]}
    )
    (outcome,) = R.run_batch(cfg, progress=False)
    assert outcome.status == "ok", outcome.error
    (result,) = json.loads((workdir / "out2" / "env" / "default" / "results.json").read_text())
    assert result["fits"] == str((workdir / "kept" / "fits").resolve())
    assert "CASTLIB_FIT_STORE" not in __import__("os").environ
    with pytest.raises(R.ConfigError, match="'fit_store' must be a folder path"):
        R.parse_config({"output_dir": "o", "fit_store": 3, "runs": [{"notebook": "nbs/env.ipynb"}]})
    record = json.loads((run_dir / "run.json").read_text())
    assert record["kernel"] == "current-env" and record["python"] == sys.executable


def test_forced_rerun_keeps_the_earlier_result_until_it_succeeds(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force writes beside the finished run and swaps at the end: an interrupted or failed
    rerun leaves the earlier run.json/results.json in place, and aggregation ignores it."""
    import papermill

    run = R.Run(workdir / "nbs" / "good.ipynb", {"x": 1}, "good/x=1", {"x": 1}, "nbs/good.ipynb")
    out = workdir / "out"
    calls = {"n": 0}

    def fake_execute(src, dst, parameters, **kwargs):
        calls["n"] += 1
        folder = Path(parameters["output_dir"])
        (folder / "results.json").write_text(json.dumps([{"accuracy": calls["n"] / 10}]))
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed mid-rerun, after writing partial outputs
        if calls["n"] == 3:
            raise ValueError("boom in the rerun")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    assert R.execute_run(run, out).status == "ok"
    final = run.run_dir(out)
    first = (final / "run.json").read_text(), (final / "results.json").read_text()

    with pytest.raises(KeyboardInterrupt):
        R.execute_run(run, out, force=True)
    assert ((final / "run.json").read_text(), (final / "results.json").read_text()) == first
    assert R.aggregate(out, figures=False)["accuracy"].tolist() == [0.1]

    failed = R.execute_run(run, out, force=True)
    assert failed.status == "failed" and "earlier result" in failed.error
    assert ((final / "run.json").read_text(), (final / "results.json").read_text()) == first

    assert R.execute_run(run, out, force=True).status == "ok"
    assert json.loads((final / "results.json").read_text()) == [{"accuracy": 0.4}]
    assert not (out / R.STAGING_DIR / "good" / "x=1.old").exists()
    assert R.aggregate(out, figures=False)["accuracy"].tolist() == [0.4]


def test_swap_cut_between_renames_is_repaired(workdir: Path) -> None:
    run = R.Run(workdir / "nbs" / "good.ipynb", {"x": 1}, "good/x=1", {"x": 1}, "nbs/good.ipynb")
    out = workdir / "out"
    old = runs_execute._staging_dir(run, out, runs_execute.OLD_SUFFIX)
    old.mkdir(parents=True)
    (old / "results.json").write_text("[]")
    (old / "run.json").write_text(json.dumps({"status": "ok", "parameters": {"x": 1}}))
    runs_execute._recover_swap(
        run, out
    )  # the run folder was renamed away and the rerun never landed
    assert R.is_complete(run, out) and not old.exists()


def test_source_state_names_the_commit_and_dirty_tree(tmp_path: Path) -> None:
    import subprocess

    assert R.source_state(tmp_path) is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run(
        [*git[:3], "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert R.source_state(tmp_path) == {"commit": head, "dirty": False, "changed": []}
    (tmp_path / "untracked.txt").write_text("x")  # untracked files do not count
    assert R.source_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert R.source_state(tmp_path) == {"commit": head, "dirty": True, "changed": ["a.txt"]}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"seeds": []}, "'seeds' = \\[\\] \\(list\\) must name at least one item"),
        ({"seeds": [0, 0]}, "'seeds' = \\[0, 0\\] \\(list\\) repeats a seed"),
        ({"seeds": [-1]}, "must be non-negative ints"),
        ({"targets": []}, "'targets' = \\[\\] \\(list\\) must name at least one item"),
        ({"methods": []}, "'methods' = \\[\\] \\(list\\) must name at least one item"),
    ],
)
def test_a_run_that_would_run_nothing_is_refused(parameters: dict, message: str) -> None:
    """An empty seed, target or method list (or a repeated seed) is refused when the config is
    read, before any model is loaded: it would otherwise write an empty or double-counted record."""
    notebook = Path(__file__).parents[1] / "notebooks" / "02_cross_domain.ipynb"
    config = {"output_dir": "o", "runs": [{"notebook": str(notebook), "parameters": parameters}]}
    with pytest.raises(R.ConfigError, match=message):
        R.parse_config(config)
    assert R.parse_config({"output_dir": "o", "runs": [{"notebook": str(notebook)}]}).runs


def _run(**params) -> R.Run:
    notebook = Path(__file__).parents[1] / "notebooks" / "02_cross_domain.ipynb"
    return R.Run(notebook, params, "02_cross_domain/x", {}, "02_cross_domain.ipynb", {})


def test_preflight_refuses_what_the_machine_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device, dtype and memory are checked before any model loads; the message names the run."""
    import torch

    from castlib.repro.runs.preflight import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(R.ConfigError, match="02_cross_domain/x: device 'cuda', but torch sees"):
        preflight([_run(device="cuda")])
    with pytest.raises(R.ConfigError, match="parameter 'dtype': unknown dtype 'float8'"):
        preflight([_run(device="cpu", dtype="float8")])
    qwen = _run(model="qwen2.5-coder-1.5b", device="cpu")
    with pytest.raises(R.ConfigError, match="needs about 8.5 GB .* this machine has 4.0 GB"):
        preflight([qwen], memory_gb=4.0)
    preflight([qwen], memory_gb=64.0)  # enough memory: nothing raised
    preflight([_run(model="some/hub-model", device="cpu")], memory_gb=0.5)  # not sized
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(R.ConfigError, match="without bfloat16 support"):
        preflight([_run(device="cuda", dtype="bf16")])
    # "auto" with CUDA: the model is not on CPU, so the CPU memory is not its limit
    preflight([_run(model="qwen2.5-coder-1.5b", device="auto")], memory_gb=4.0)


def test_a_refused_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    from castlib.repro.runs.cli import main

    notebook = Path(__file__).parents[1] / "notebooks" / "02_cross_domain.ipynb"
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"output_dir: {out}\nruns:\n  - notebook: {notebook}\n    parameters: {{device: cuda:3}}\n"
    )
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a cuda unit is runnable here")
    assert main([str(cfg)]) == 2
    assert not out.exists()
