"""castlib.repro.archive, castlib.repro.claims, castlib.repro.report and castlib.repro.results_pages
on a small synthetic batch and on the repository's archive (the site built from them is checked
in a browser by tests/test_docs_site.py).

The synthetic batch runs a tiny notebook named ``02_cross_domain.ipynb`` (no model: it writes
made-up records with per-example predictions, saves a PNG and shows it inline, and prints its
absolute output folder) through `castlib.repro.runs.run_batch`, so the archive holds real executed
notebooks with machine paths to clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from castlib.repro import archive as A
from castlib.repro import claims as C
from castlib.repro import report as REP
from castlib.repro import results_md as MD
from castlib.repro import results_pages as PAGES
from castlib.repro import runs as R

ROOT = Path(__file__).resolve().parents[1]

NOTEBOOK_CODE = textwrap.dedent(
    """
    import json
    from pathlib import Path

    import numpy as np
    from matplotlib.figure import Figure
    from IPython.display import Image, display

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print("writing into", out.resolve())
    rng = np.random.default_rng(seed)
    gold = (np.arange(n) % 3).tolist()
    ids = [f"t-{i}" for i in range(n)]
    hits = {"zero_shot": 0.4, "cast": 0.9, "icv": 0.5, "few_shot": 0.95}
    records = []
    for target in ("alpha_task", "beta_task"):
        for method, p in hits.items():
            right = rng.random(n) < p
            pred = [g if r else (g + 1) % 3 for g, r in zip(gold, right)]
            records.append({
                "model": "tiny", "method": method, "target": target, "seed": seed,
                "n": n, "accuracy": float(np.mean(right)),
                "uses_target_labels": method == "few_shot",
                "predictions": json.dumps({"id": ids, "pred": pred, "gold": gold,
                                           "n_options": [3] * n}),
            })
    (out / "results.json").write_text(json.dumps(records))
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().bar(["zero_shot", "cast"], [0.4, 0.9])
    fig.savefig(out / "accuracy.png")
    display(Image(filename=str(out / "accuracy.png")))
    """
)


def _tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("output_dir = 'results'\nseed = 0\nn = 60")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), params]
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CODE))
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A batch of one run of the tiny notebook, archived twice: by archive.sh as is
    (``papermill_runs/results/synth``) and with image outputs dropped
    (``archive_small/synth``)."""
    root = tmp_path_factory.mktemp("repo")
    nb = _tiny_notebook(root / "02_cross_domain.ipynb")
    config = R.parse_config(
        {
            "output_dir": str(root / "runs_out" / "synth"),
            "runs": [{"notebook": str(nb), "grid": {"seed": [0]}}],
        }
    )
    outcomes = R.run_batch(config, progress=False)
    assert [o.status for o in outcomes] == ["ok"], [o.error for o in outcomes]
    # archive.sh as a user runs it, from a copy inside the synthetic repository (it archives
    # into the papermill_runs/results/ beside itself and strips its repository root)
    script = root / "papermill_runs" / "results" / "archive.sh"
    script.parent.mkdir(parents=True)
    shutil.copy(ROOT / "papermill_runs" / "results" / "archive.sh", script)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", str(script), "runs_out/synth", "synth"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "archived 02_cross_domain/seed=0"
    archive = script.parent
    small = root / "archive_small"
    A.archive_batch(
        config.output_dir, small / "synth", root, home=Path.home(), max_notebook_bytes=1
    )
    return {"root": root, "archive": archive, "small": small, "src": config.output_dir}


# --------------------------------------------------------------------------- archive


def test_replace_paths_root_before_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    root = home / "repo"
    value = {"a": [f"{root}/notebooks/x.ipynb", f"{home}/.cache/m", str(root)], "b": 3}
    assert A.replace_paths(value, root, home) == {
        "a": ["notebooks/x.ipynb", "~/.cache/m", "."],
        "b": 3,
    }


def test_archive_keeps_records_figures_and_clean_notebooks(synthetic: dict[str, Path]) -> None:
    root = str(synthetic["root"].resolve())
    for seed in (0,):
        run = synthetic["archive"] / "synth" / "02_cross_domain" / f"seed={seed}"
        assert {p.name for p in run.iterdir()} >= {
            "run.json",
            "results.json",
            "accuracy.png",
            "02_cross_domain.ipynb",
        }
        for name in ("run.json", "02_cross_domain.ipynb"):
            text = (run / name).read_text()
            assert root not in text, f"{name} keeps the machine path {root}"
            assert str(Path.home()) + "/" not in text
        nb = nbformat.read(run / "02_cross_domain.ipynb", as_version=4)
        outputs = [o for c in nb.cells for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs)
        assert any("writing into runs_out/synth/" in o.get("text", "") for o in outputs)
    assert (synthetic["archive"] / "synth" / R.PREDICTIONS_FILE).is_file()
    assert (synthetic["archive"] / "synth" / R.SUMMARY_FILE).is_file()


def test_archive_drops_images_of_large_notebooks_and_keeps_pngs(
    synthetic: dict[str, Path],
) -> None:
    run = synthetic["small"] / "synth" / "02_cross_domain" / "seed=0"
    nb = nbformat.read(run / "02_cross_domain.ipynb", as_version=4)
    data = [o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])]
    assert not any(k.startswith("image/") for d in data for k in d)
    assert any(d.get("text/plain") == A.DROPPED_IMAGE_NOTE for d in data)
    assert (run / "accuracy.png").stat().st_size > 0


def test_archive_skips_failed_runs_and_reports_bad_folder(tmp_path: Path) -> None:
    run = tmp_path / "out" / "nb" / "default"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "failed", "run_id": "nb/default"}))
    assert A.archive_batch(tmp_path / "out", tmp_path / "arch", tmp_path) == []
    with pytest.raises(FileNotFoundError, match="batch output folder not found"):
        A.archive_batch(tmp_path / "nope", tmp_path / "arch", tmp_path)


# --------------------------------------------------------------------------- claims


def _records(acc: dict[str, list[int]], target: str = "t", seed: int = 0) -> list[dict]:
    n = len(next(iter(acc.values())))
    gold = [0] * n
    return [
        {
            "run_id": f"nb/seed={seed}",
            "target": target,
            "method": method,
            "seed": seed,
            "uses_target_labels": False,
            "predictions": {"id": list(range(n)), "pred": [1 - r for r in right], "gold": gold},
        }
        for method, right in acc.items()
    ]


def _pg(record: dict) -> tuple[list[int], list[int]]:
    return record["predictions"]["pred"], record["predictions"]["gold"]


def test_main_table_paired_and_verdicts() -> None:
    n = 200
    better = _records(
        {
            "zero_shot": [1] * 60 + [0] * 140,
            "cast": [1] * 180 + [0] * 20,
            "icv": [1] * 70 + [0] * 130,
        }
    )
    rows = pd.DataFrame([{**r, "accuracy": float(np.mean(np.equal(*_pg(r))))} for r in better])
    main = C.main_table(rows, better, n_boot=500)
    assert main.paired
    assert main.table.loc[0, "seeds"] == 1
    assert main.table.loc[0, "best label-free"].startswith("icv: 0.350 [")
    assert "resolved" in main.table.loc[0, "CAST - best label-free"]
    claim = C.CLAIMS[2]
    assert C.claim_paragraph(claim, rows, better, n_boot=500).startswith("Supported")
    same = _records(
        {
            "zero_shot": [1] * (n // 2) + [0] * (n // 2),
            "cast": [0] * (n // 2) + [1] * (n // 2),
            "icv": [1] * n,
        }
    )
    rows_same = rows.assign(run_id="nb/seed=0")
    text = C.claim_paragraph(claim, rows_same, same, n_boot=500)
    assert text.startswith("Not supported")  # icv (always right) beats CAST (half right)


def test_main_table_marks_missing_comparisons_na_not_nan() -> None:
    """A target whose records lack CAST (a batch archived in part) shows "n/a" in the CAST
    difference cells, beside a target that has them, never a NaN."""
    recs = _records({"zero_shot": [1] * 12 + [0] * 8, "cast": [1] * 14 + [0] * 6}, target="a")
    recs += _records({"icv": [1] * 9 + [0] * 11}, target="b")
    rows = pd.DataFrame([{**r, "accuracy": float(np.mean(np.equal(*_pg(r))))} for r in recs])
    table = C.main_table(rows, recs, n_boot=200).table.set_index("target")
    assert "p = " in table.loc["a", "CAST - zero-shot"]
    assert table.loc["b", "CAST - zero-shot"] == "n/a"
    assert table.loc["b", "CAST - best label-free"] == "n/a"
    assert not table.isna().any().any()


def test_main_table_counts_seeds_not_per_source_runs() -> None:
    """A method fitted once per source task (cross-task ICL) has several records per seed."""
    recs = []
    for seed in (0, 1):
        recs += _records({"zero_shot": [1] * 10 + [0] * 10, "cast": [1] * 12 + [0] * 8}, seed=seed)
        for source in ("a", "b", "c"):
            (icl,) = _records({"cross_task_icl": [1] * 9 + [0] * 11}, seed=seed)
            recs.append({**icl, "source": source})
    rows = pd.DataFrame([{**r, "accuracy": float(np.mean(np.equal(*_pg(r))))} for r in recs])
    assert C.main_table(rows, recs, n_boot=200).table.loc[0, "seeds"] == 2
    assert C.main_table(rows, None).table.loc[0, "seeds"] == 2


def test_main_table_without_predictions_is_mean_std() -> None:
    rows = pd.DataFrame(
        [
            {"run_id": f"r{s}", "target": "t", "method": m, "seed": s, "n": 10, "accuracy": a}
            for s in (0, 1)
            for m, a in (("zero_shot", 0.5), ("cast", 0.4 + 0.1 * s), ("icv", 0.6))
        ]
    )
    main = C.main_table(rows, None)
    assert not main.paired
    assert main.table.loc[0, "CAST"] == "0.450 +- 0.071"
    assert "not testable" in main.table.loc[0, "CAST - zero-shot"]
    assert C.claim_paragraph(C.CLAIMS[2], rows).startswith("Undecided")
    one = C.main_table(rows[rows["seed"] == 1], None)  # one seed: no spread to show
    assert one.table.loc[0, "CAST"] == "0.500 (1 seed)"
    # a per-source method: its sources within a seed are pooled first, so one seed with three
    # sources is "(1 seed)" (not a std over sources), and two seeds give the std of the pools
    per_source = pd.DataFrame(
        [
            {
                "run_id": f"r{s}",
                "target": "t",
                "method": "icl",
                "seed": s,
                "source": src,
                "n": 10,
                "accuracy": a + 0.1 * s,
            }
            for s in (0, 1)
            for src, a in (("a", 0.3), ("b", 0.6), ("c", 0.9))
        ]
    )
    table = C.main_table(pd.concat([rows, per_source]), None).table  # pools 0.6 and 0.7
    assert table.loc[0, "best label-free"] == "icl: 0.650 +- 0.071"
    seed1 = pd.concat([rows[rows["seed"] == 1], per_source[per_source["seed"] == 1]])
    assert C.main_table(seed1, None).table.loc[0, "best label-free"] == "icl: 0.700 (1 seed)"
    with pytest.raises(ValueError, match="lack the columns"):
        C.main_table(rows.drop(columns="target"))


# --------------------------------------------------------------------------- results pages


@pytest.fixture(scope="module")
def synthetic_pages(synthetic: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pages")
    written = PAGES.results_pages(synthetic["small"], out, root=None, n_boot=300)
    assert out / "docs" / "results.md" in written
    return out


def _image_links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_results_pages_from_synthetic_archive(synthetic_pages: Path) -> None:
    page = (synthetic_pages / "docs" / "results.md").read_text()
    for claim in C.CLAIMS:
        assert f"{{ #claim-{claim.notebook} }}" in page
        assert f"## {claim.notebook} {{ #{claim.notebook} }}" in page
    assert "paired-bootstrap interval" in page
    assert "| alpha_task" in page and "| beta_task" in page
    assert re.search(
        r"\| `synth` \| tiny \| 1 of \? \| .* \| [\d.]+ h over 1 run \([\d,]+ s\): 02_cross_domain [\d,]+ s \|",
        page,
    )
    run = "../papermill_runs/results/synth/02_cross_domain/seed=0/"
    assert f"[02_cross_domain]({run}02_cross_domain.ipynb)" in page
    assert f"[accuracy]({run}accuracy.png)" in page
    images = _image_links(page)
    assert images, "the results page shows no figure"
    for src in images:
        assert (synthetic_pages / "docs" / src).stat().st_size > 0, src
    # the archive dropped this notebook's images: the site's copy has its PNG figures appended
    copy = synthetic_pages / "papermill_runs" / "results" / "synth" / "02_cross_domain" / "seed=0"
    nb = nbformat.read(copy / "02_cross_domain.ipynb", as_version=4)
    assert nb.cells[-1].source == "## Figures of this run\n\n![accuracy.png](accuracy.png)"
    folder = (copy.parent / "index.md").read_text()
    assert "[02_cross_domain](seed=0/02_cross_domain.ipynb)" in folder
    assert "../../../../docs/results.md#02_cross_domain-synth" in folder


def test_results_pages_from_the_repository_archive(tmp_path: Path) -> None:
    archive = ROOT / "papermill_runs" / "results"
    PAGES.results_pages(archive, tmp_path, n_boot=200)
    page = (tmp_path / "docs" / "results.md").read_text()
    summary = pd.read_csv(archive / "full_cpu_200rows" / R.SUMMARY_FILE)
    cross = summary[summary["notebook"].str.contains("02_cross_domain")]
    for target in cross["target"].unique():
        assert f"| {target} " in page, target
    # the README's block is on the page, computed the same way
    assert MD.main_tables_markdown(archive, n_boot=200) in page
    images = _image_links(page)
    assert images and all(
        (tmp_path / "docs" / src).is_file() or src.startswith("../") for src in images
    )
    # notebooks with no figure computed from the records show their runs' archived figures
    for run in (archive / "full_cpu").glob("0[4-7]_*/default"):
        for png in run.glob("*.png"):
            assert (
                f"../papermill_runs/results/full_cpu/{run.parent.name}/default/{png.name}" in images
            )
    # every archived executed notebook is one link away
    for nb in archive.glob("*/*/*/*.ipynb"):
        assert f"(../{nb.relative_to(ROOT).as_posix()})" in page, nb
        assert (tmp_path / nb.relative_to(ROOT).parent.parent / "index.md").is_file()


def test_results_pages_without_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no archive under"):
        PAGES.results_pages(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="archive folder not found"):
        PAGES.results_pages(tmp_path / "none", tmp_path / "out")


def _claim(stem: str) -> C.Claim:
    return next(c for c in C.CLAIMS if c.notebook == stem)


def test_consistency_verdict_reads_numeric_layers() -> None:
    rows = pd.DataFrame(
        [{"analysis": "norm", "layer": "all", "cross_task_cosine": None, "floor": None,
          "ceiling": None, "target": "a"}]
        + [{"analysis": "layer", "layer": str(la), "cross_task_cosine": c, "floor": 0.05,
            "ceiling": 0.9, "target": "a+b+c"} for la, c in enumerate([0.5, 0.01, 0.4, 0.3])]
    )  # fmt: skip
    # records with only the random floor: the floor cannot fail, so the claim is not evaluated
    text = C.claim_paragraph(_claim("01_activation_patterns"), rows)
    assert text.startswith("Not evaluated")
    assert "3 tasks" in text and "at layer 2 the mean cross-task cosine" in text
    assert "is 0.400" in text
    # records of the placebo comparison: supported where both placebo intervals are above zero
    placebo = rows.assign(supported=[None, "True", "False", "true", "False"])
    text = C.claim_paragraph(_claim("01_activation_patterns"), placebo)
    assert text.startswith("Supported at layers [0, 2] (2 of 4)")
    none = rows.assign(supported=[None, False, False, False, False])
    assert C.claim_paragraph(_claim("01_activation_patterns"), none).startswith("Not supported")


def test_ablation_scalability_robustness_similarity_verdicts() -> None:
    abl = pd.DataFrame(
        [
            {"ablation": ax, "variant": v, "is_default": d, "accuracy": a,
             "zero_shot_accuracy": 0.3, "method": "cast"}
            for ax, v, d, a in [("selection", "cast", True, 0.5), ("selection", "random", False, 0.4),
                                ("contrast", "mean", True, 0.5), ("contrast", "pca", False, 0.6)]
        ]
    )  # fmt: skip
    text = C.claim_paragraph(_claim("04_ablations"), abl)
    assert text.startswith("Not supported by the means: another contrast scores higher")
    assert "zero-shot 0.300" in text

    sc = pd.DataFrame(
        [{"method": "zero_shot", "m": 0, "accuracy": 0.3, "prompt_tokens_per_query": 50,
          "fits_context": True}]
        + [{"method": "cross_task_icl", "m": m, "accuracy": a, "prompt_tokens_per_query": 50 * m,
            "fits_context": m < 64} for m, a in ((4, 0.4), (16, 0.5), (64, None))]
        + [{"method": "cast", "m": m, "accuracy": 0.45, "prompt_tokens_per_query": 50,
            "fits_context": True} for m in (4, 16, 64)]
    )  # fmt: skip
    text = C.claim_paragraph(_claim("05_scalability_cost"), sc)
    assert text.startswith("Partly supported")
    assert "At m = 16" in text and "m = [64]" in text and "more accurate than ICL at 1 of 2" in text

    sens = pd.DataFrame(
        [{"param": p, "value": v, "accuracy": a, "method": "cast"}
         for p, v, a in [("alpha", 0.0, 0.3), ("alpha", 1.0, 0.35), ("alpha", 2.0, 0.25),
                         ("k", 1, 0.33), ("k", 4, 0.35)]]
    )  # fmt: skip
    text = C.claim_paragraph(_claim("06_sensitivity"), sens)
    assert text.startswith("Not supported by this measure: 1 of 4 swept values")

    pairs = pd.DataFrame(
        [{"source": s, "target": "t", "cosine": c, "gain": g, "method": "cast", "accuracy": 0.5}
         for s, c, g in [("a", 0.1, -0.02), ("b", 0.5, 0.03), ("c", 0.9, 0.08)]]
    )  # fmt: skip
    text = C.claim_paragraph(_claim("07_transfer_vs_similarity"), pairs)
    assert text.startswith("Supported by notebook 07's measure") and "2 of 3 pair(s)" in text
    assert C.claim_paragraph(_claim("07_transfer_vs_similarity"), pairs.iloc[:0]).startswith(
        "No archived run"
    )


# --------------------------------------------------------------------------- README tables


def test_readme_tables_from_synthetic_archive(synthetic: dict[str, Path]) -> None:
    text = MD.main_tables_markdown(synthetic["archive"], root=synthetic["root"], n_boot=500)
    assert "#### 02_cross_domain: `synth`, tiny" in text
    assert "| target" in text and "alpha_task" in text and "beta_task" in text
    # cast is right on ~90% of 60 rows, zero-shot on ~40%: resolved on both targets
    assert "CAST against zero-shot: better on 2 (alpha_task, beta_task), worse on 0" in text
    assert "paired-bootstrap" in text


def test_readme_tables_skip_superseded_configs(synthetic: dict[str, Path], tmp_path: Path) -> None:
    archive = tmp_path / "papermill_runs" / "results"
    shutil.copytree(synthetic["archive"] / "synth", archive / "synth")
    (tmp_path / "papermill_runs" / "synth.yaml").write_text(
        "superseded: by other.yaml\noutput_dir: x\n"
        "runs:\n  - notebook: notebooks/02_cross_domain.ipynb\n",
        encoding="utf-8",
    )
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "02_cross_domain.ipynb").write_text("{}", encoding="utf-8")
    text = MD.main_tables_markdown(archive, n_boot=200)
    assert "####" not in text
    assert "`synth` (superseded: by other.yaml)" in text


def test_readme_block_replacement_and_bad_readme() -> None:
    text = f"intro\n{MD.BEGIN}\nold\n{MD.END}\ntail\n"
    new = MD.replace_block(text, "| a |\n")
    assert new == f"intro\n{MD.BEGIN}\n\n| a |\n\n{MD.END}\ntail\n"
    assert MD.replace_block(new, "| a |") == new
    with pytest.raises(ValueError, match="no .* block"):
        MD.replace_block("no markers here", "x")


def test_readme_main_tables_match_the_archive(capsys: pytest.CaptureFixture[str]) -> None:
    rc = MD.main(
        [
            "--check",
            "--archive",
            str(ROOT / "papermill_runs" / "results"),
            "--readme",
            str(ROOT / "README.md"),
        ]
    )
    assert rc == 0, capsys.readouterr().out + " (make readme-tables rewrites them)"


def test_wall_time_sums_run_seconds_per_notebook(synthetic: dict[str, Path]) -> None:
    cfg = REP.ArchivedConfig(
        "c",
        Path("c"),
        pd.DataFrame(),
        None,
        seconds={"02_x/a": 100.0, "02_x/b": 300.5, "03_y/a": 7200.0},
    )
    table = REP.wall_time(cfg).set_index("notebook")
    assert table.loc["02_x", ["runs", "seconds", "min", "max"]].tolist() == [2, 400.5, 100.0, 300.5]
    assert table.loc["03_y", "runs"] == 1 and table.loc["03_y", "seconds"] == 7200.0
    assert table.loc["all", ["runs", "seconds"]].tolist() == [3, 7600.5]
    assert table.loc["all", "hours"] == pytest.approx(7600.5 / 3600)
    assert REP.wall_time_text(cfg) == (
        "2.1 h over 3 runs (7,600 s): 02_x 400 s over 2 runs (100-300 s each); 03_y 7,200 s"
    )
    empty = REP.ArchivedConfig("e", Path("e"), pd.DataFrame(), None)
    assert REP.wall_time(empty).empty and REP.wall_time_text(empty) == ""
    # from an archive: the run.json's seconds
    archived = REP.load_archive(synthetic["archive"] / "synth")
    record = json.loads(
        (synthetic["archive"] / "synth" / "02_cross_domain" / "seed=0" / "run.json").read_text()
    )
    assert archived.seconds == {"02_cross_domain/seed=0": record["seconds"]}
    assert REP.wall_time(archived).iloc[-1]["seconds"] == record["seconds"]


def test_wall_time_command_line(
    synthetic: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert REP.main(["--archive", str(synthetic["archive"]), "--wall-time"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synth:") and "02_cross_domain" in out and "all" in out
    with pytest.raises(SystemExit):
        REP.main(["--archive", str(tmp_path / "none"), "--wall-time"])
    assert "no archive under" in capsys.readouterr().err


def test_archive_configs_lists_config_folders_with_a_summary(tmp_path: Path) -> None:
    assert REP.archive_configs(tmp_path / "none") == []
    for name in ("b", "a", "no_summary"):
        (tmp_path / name).mkdir()
    (tmp_path / "b" / R.SUMMARY_FILE).write_text("x\n")
    (tmp_path / "a" / R.SUMMARY_FILE).write_text("x\n")
    (tmp_path / R.SUMMARY_FILE).write_text("a file, not a config folder\n")
    assert REP.archive_configs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    # the README's tables refuse a missing archive instead of saying "nothing archived yet"
    with pytest.raises(FileNotFoundError, match="archive folder not found"):
        MD.main_tables_markdown(tmp_path / "none")
    assert MD.main_tables_markdown(tmp_path / "no_summary", root=tmp_path) == (
        "No archived run of notebooks 02 or 03 yet."
    )
