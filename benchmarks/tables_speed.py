"""The main-table batch against an earlier commit: wall time per method, same machine, unit by unit.

Issue 18's third goal: the non-adapter methods of ``papermill_runs/tables_cpu.yaml`` (every
method but the LoRA and KaSA adapters, whose cost is training) must run >= 3x faster in total
than at commit 577608b (before cached prompt prefixes and the activation store). This script runs
that batch, restricted to those methods, once with the code of the old commit (a git worktree,
its own notebooks, ``PYTHONPATH`` pointing at it) and once with the working tree, one run after
the other on the same machine, and compares the records' ``fit_seconds + eval_seconds`` per
method and the runs' wall seconds.

The whole comparison takes hours on a 2-core CPU, longer than one working session, so it is done
unit by unit (one papermill run of the batch, e.g. ``targets=financial_phrasebank``): ``run``
executes one unit on both sides back to back and writes a small summary of each side to
``benchmarks/tables_speed/<side>/<unit>.json`` (committed: the batch outputs themselves stay in
``benchmarks/results/``, git-ignored). ``report`` aggregates the summaries present::

    python -m benchmarks.tables_speed units                 # the units and which are done
    python -m benchmarks.tables_speed run "targets=financial_phrasebank"
    python -m benchmarks.tables_speed report [--json out.json | --markdown] [--exclude i2cl]

The new side keeps its activation store from unit to unit, as one whole batch does, so units run
in the batch's order cost what they cost inside the batch (the first 02 unit pays the I2CL fit,
the next ones reload it); ``run --fresh-store`` measures a unit alone. Each summary records the
store's size before its run, and ``report`` says per unit whether the new side started empty.

Only the ratios of two sides of the same unit, run back to back, mean anything across machines.
The methods are not identical across the commits (issue 20 gave every steering method the same
21-configuration tuning grid and redefined ICV and I2CL), so the comparison is of what the same
batch costs, not of identical computations; the accuracies are reported beside the times.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from castlib.repro import runs as R

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "577608b"
#: every method of tables_cpu.yaml but the adapters (their cost is training, not inference)
METHODS = [
    "zero_shot",
    "few_shot",
    "cross_task_icl_random",
    "cross_task_icl_similar",
    "task_vector",
    "icv",
    "function_vector",
    "i2cl",
    "cast",
]
#: notebook 05's cost table without the adapters
COST_METHODS = ["task_vector", "icv", "function_vector", "i2cl"]
SUMMARIES = Path(__file__).resolve().parent / "tables_speed"
OUTPUTS = Path(__file__).resolve().parent / "results" / "tables_speed"
SIDES = ("old", "new")


def batch_config(side: str) -> dict[str, Any]:
    """``tables_cpu.yaml`` with the adapters left out and the output under ``OUTPUTS/side``."""
    config = yaml.safe_load((ROOT / "papermill_runs" / "tables_cpu.yaml").read_text())
    config["output_dir"] = str(OUTPUTS / side)
    for run in config["runs"]:
        params = run["parameters"]
        if "methods" in params:
            params["methods"] = list(METHODS)
        if run["name"] == "05_scalability_cost":
            params["cost_methods"] = list(COST_METHODS)
    return config


def _old_tree(commit: str) -> Path:
    """A git worktree of ``commit`` beside the benchmark outputs (made once)."""
    tree = OUTPUTS / f"tree-{commit}"
    if not (tree / "castlib").is_dir():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), commit],
            check=True,
        )
    return tree


def _old_data() -> Path:
    """The shipped data as the old commit reads it: its loader wants ``<split>.jsonl``, the
    repository now ships ``<split>.jsonl.gz`` (same rows); decompressed once."""
    out = OUTPUTS / "data-jsonl"
    for src in sorted((ROOT / "data").rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(ROOT / "data")
        dest = out / (rel.with_suffix("") if src.suffix == ".gz" else rel)
        if dest.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(dest, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy2(src, dest)
    return out


def unit_ids() -> list[str]:
    """The run ids of the batch (the same on both sides)."""
    return [run.run_id for run in R.parse_config(batch_config("new"), base_dir=ROOT).runs]


def _summary_path(side: str, run_id: str) -> Path:
    return SUMMARIES / side / (run_id.replace("/", "__") + ".json")


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _store_size(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def run_side(
    side: str, unit: str, commit: str = OLD_COMMIT, *, fresh_store: bool = False
) -> list[Path]:
    """Run the batch's runs whose id contains ``unit`` with the ``side`` code; returns the
    summaries written (one per run).

    The new side keeps its activation store (and the fits in it) from one unit to the next, as
    one whole batch run does (``castlib.repro.runs`` gives every notebook of a batch one store), unless
    ``fresh_store``; each summary records the store's size before the run. The old code has no
    store."""
    config = batch_config(side)
    env = dict(os.environ)
    cwd = ROOT
    if side == "old":
        cwd = _old_tree(commit)
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env.setdefault("CASTLIB_DATA", str(_old_data()))
        # the old code's own model cache: its cache layout may differ from today's
        env.setdefault("CASTLIB_CACHE", str(OUTPUTS / f"cache-{commit}"))
    store = OUTPUTS / side / R.STORE_FOLDER
    if fresh_store:
        shutil.rmtree(store, ignore_errors=True)
    store_before = _store_size(store)
    path = OUTPUTS / f"config-{side}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_before = _load_average()
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "castlib.repro.runs",
            str(path),
            "--only",
            unit,
            "--no-progress",
            "--force",
        ],
        cwd=cwd,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{side} side of {unit!r} failed (exit {proc.returncode})")
    written = []
    for run_file in sorted((OUTPUTS / side).rglob("run.json")):
        run_dir = run_file.parent
        run_id = run_dir.relative_to(OUTPUTS / side).as_posix()
        if unit not in run_id or "_staging" in run_id:
            continue
        record = json.loads(run_file.read_text())
        finished = _dt.datetime.fromisoformat(record.get("finished") or "1970-01-01T00:00:00+00:00")
        if record.get("status") != "ok" or finished.timestamp() < start:
            continue
        methods = method_seconds(json.loads((run_dir / "results.json").read_text()))
        summary = {
            "side": side,
            "commit": commit if side == "old" else _head(),
            "run_id": run_id,
            "wall_s": record.get("seconds"),
            "methods": methods,
            "fresh_store": fresh_store,
            "store_before": store_before,
            "load_average_before": load_before,
            "load_average_after": _load_average(),
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        out = _summary_path(side, run_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        written.append(out)
    return written


def method_seconds(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method of a run's records: summed fit and evaluation seconds, the record count and
    accuracies. A fit reloaded from the batch's fit store (``fit_reused_from``) counts 0 s here:
    its record keeps the original fit's seconds, which this run did not spend (reading it back
    is part of the run's wall time); ``fits_reused`` counts them."""
    methods: dict[str, dict[str, Any]] = {}
    for rec in records:
        m = methods.setdefault(
            rec["method"], {"fit_s": 0.0, "eval_s": 0.0, "n_records": 0, "fits_reused": 0}
        )
        if rec.get("fit_reused_from"):
            m["fits_reused"] += 1
        else:
            m["fit_s"] += float(rec.get("fit_seconds") or 0.0)
        m["eval_s"] += float(rec.get("eval_seconds") or 0.0)
        m["n_records"] += 1
        m.setdefault("accuracy", []).append(rec.get("accuracy"))
    return methods


def _head() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "castlib", "notebooks"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def report(units: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Per method, per side: summed fit+eval seconds over the units done on both sides; the
    runs' wall seconds; the ratios old / new. ``exclude``: methods left out of every sum (the
    runs' wall seconds then count only the remaining methods' seconds)."""
    done = []
    per_method: dict[str, dict[str, float]] = {}
    walls = {side: 0.0 for side in SIDES}
    per_unit: dict[str, dict[str, Any]] = {}
    for run_id in units:
        sums = {s: _summary_path(s, run_id) for s in SIDES}
        if not all(p.is_file() for p in sums.values()):
            continue
        done.append(run_id)
        for side, path in sums.items():
            summary = json.loads(path.read_text())
            left_out = sum(
                m["fit_s"] + m["eval_s"] for k, m in summary["methods"].items() if k in exclude
            )
            wall = float(summary["wall_s"] or 0.0) - left_out
            walls[side] += wall
            unit = per_unit.setdefault(run_id, {})
            unit[f"{side}_wall_s"] = wall
            if side == "new":
                # summaries written before the field existed all started from an empty store
                unit["new_fresh_store"] = summary.get("fresh_store", True)
            for method, m in summary["methods"].items():
                if method in exclude:
                    continue
                row = per_method.setdefault(method, {f"{s}_s": 0.0 for s in SIDES})
                row[f"{side}_s"] += m["fit_s"] + m["eval_s"]
    for row in per_method.values():
        row["speedup"] = row["old_s"] / row["new_s"] if row["new_s"] else float("nan")
    total = {s: sum(r[f"{s}_s"] for r in per_method.values()) for s in SIDES}
    return {
        "units_done": done,
        "units_missing": [u for u in units if u not in done],
        "excluded_methods": list(exclude),
        "units": per_unit,
        "methods": per_method,
        "method_seconds": total,
        "method_speedup": total["old"] / total["new"] if total["new"] else None,
        "wall_seconds": walls,
        "wall_speedup": walls["old"] / walls["new"] if walls["new"] else None,
        "goal": ">= 3 (method seconds, every unit done)",
    }


def markdown(result: dict[str, Any]) -> str:
    """`report`'s result as a Markdown table: one row per method, then the totals."""
    lines = [
        f"| method | {OLD_COMMIT} (s) | now (s) | old / new |",
        "|---|---|---|---|",
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"| {method} | {row['old_s']:.0f} | {row['new_s']:.0f} | {row['speedup']:.2f} |"
        )
    secs, walls = result["method_seconds"], result["wall_seconds"]
    lines.append(
        f"| all methods | {secs['old']:.0f} | {secs['new']:.0f} | **{result['method_speedup']:.2f}** |"
    )
    lines.append(
        f"| the runs' wall time | {walls['old']:.0f} | {walls['new']:.0f} | {result['wall_speedup']:.2f} |"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("units", help="list the units and which sides are done")
    p_run = sub.add_parser("run", help="run one unit: the old side, then the new side")
    p_run.add_argument("unit", help="substring of the run ids (castlib.repro.runs --only)")
    p_run.add_argument("--sides", default="old,new", help="comma-separated: old,new")
    p_run.add_argument("--commit", default=OLD_COMMIT)
    p_run.add_argument(
        "--fresh-store",
        action="store_true",
        help="empty the new side's activation store first (default: kept, as in one batch)",
    )
    p_rep = sub.add_parser("report", help="aggregate the summaries present")
    p_rep.add_argument("--json", type=Path, default=None)
    p_rep.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p_rep.add_argument(
        "--exclude", default="", help="comma-separated methods to leave out of the sums"
    )
    args = parser.parse_args(argv)
    if args.cmd == "units":
        for run_id in unit_ids():
            state = [s for s in SIDES if _summary_path(s, run_id).is_file()]
            print(f"{run_id:60s} done: {','.join(state) or '-'}")
        return 0
    if args.cmd == "run":
        for side in args.sides.split(","):
            if side not in SIDES:
                parser.error(f"unknown side {side!r}; expected one of {SIDES}")
            for path in run_side(side, args.unit, args.commit, fresh_store=args.fresh_store):
                print(f"wrote {path.relative_to(ROOT)}")
        return 0
    result = report(unit_ids(), exclude=[m for m in args.exclude.split(",") if m])
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(markdown(result) if args.markdown else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
