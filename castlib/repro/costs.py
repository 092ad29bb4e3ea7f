"""Where an archived batch spends its time: wall seconds per notebook, model and method.

Every method record in a run's ``results.json`` carries ``fit_seconds`` (the method's fit, its
choice of layer and strength on tuning rows included: the tuning sweep runs inside the fit) and
``eval_seconds`` (scoring the evaluation rows); records made since issue 43 also carry
``tune_seconds`` (the choice alone), which the table takes out of the fit. For older records the
choice is not timed apart: their ``tune_seconds`` is empty (NaN) and their fit includes it
(``tuning_timed`` counts the records that time it). A fit that
was reloaded from the fit store (``fit_reused_from`` in the record) cost nothing in that run: its
``fit_seconds`` are the original fit's, counted once, in the run that made it. What a run spent
outside the methods (loading the model, recording activations for analyses, writing tables and
figures) is the run's wall time (``seconds`` of ``run.json``) minus its methods' fit and
evaluation seconds; it is one row per notebook, ``method = "(outside methods)"``.

    cost_table(load_archive(folder))   # one row per notebook, model and method
    castlib.repro.costs.main(["--archive", "papermill_runs/results"])   # printed per config

The seconds are what the archived runs measured on the machine that ran them (``run.json`` and
the records say which); a table mixes no machines because each archive folder is one config.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import runs as R
from .report import ArchivedConfig, archive_configs, load_archive, wall_time_text

OUTSIDE = "(outside methods)"
COLUMNS = [
    "notebook",
    "model",
    "method",
    "records",
    "fits_reused",
    "tuning_timed",
    "fit_seconds",
    "tune_seconds",
    "eval_seconds",
    "seconds",
    "share",
]


def _method_rows(cfg: ArchivedConfig) -> list[dict]:
    """One dict per method record of every ok run of ``cfg``, plus each run's time outside
    its methods."""
    rows: list[dict] = []
    for run_id, run_dir in sorted(cfg.run_dirs.items()):
        notebook = run_id.split("/")[0]
        results = run_dir / R.RESULTS_FILE
        records = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else []
        inside = 0.0
        model = None
        for rec in records if isinstance(records, list) else []:
            if not isinstance(rec.get("fit_seconds"), (int, float)):
                continue
            reused = bool(rec.get("fit_reused_from"))
            fit = 0.0 if reused else float(rec["fit_seconds"])
            timed = isinstance(rec.get("tune_seconds"), (int, float))
            tune = (0.0 if reused else float(rec["tune_seconds"])) if timed else None
            ev = float(rec.get("eval_seconds") or 0.0)
            model = rec.get("model", model)
            inside += fit + ev
            rows.append(
                {
                    "notebook": notebook,
                    "model": rec.get("model"),
                    "method": rec.get("method"),
                    "fits_reused": int(reused),
                    "tuning_timed": int(timed),
                    "fit_seconds": fit - (tune or 0.0),
                    "tune_seconds": tune,
                    "eval_seconds": ev,
                }
            )
        if run_id in cfg.seconds:
            rows.append(
                {
                    "notebook": notebook,
                    "model": model if model is not None else (cfg.models or [None])[0],
                    "method": OUTSIDE,
                    "fits_reused": 0,
                    "tuning_timed": 0,
                    "fit_seconds": 0.0,
                    "tune_seconds": None,
                    # never negative: a record's seconds can include a resumed fit's earlier runs
                    "eval_seconds": max(0.0, cfg.seconds[run_id] - inside),
                }
            )
    return rows


def _sum_or_nan(values: pd.Series) -> float:
    """The sum, or NaN when no value was recorded (tuning not timed apart)."""
    return values.sum(min_count=1)


def cost_table(cfg: ArchivedConfig) -> pd.DataFrame:
    """Seconds per (notebook, model, method) of ``cfg``'s archived runs, with ``records`` (method
    records summed), ``fits_reused`` (of those, fits reloaded from the store and counted as 0 s),
    ``tuning_timed`` (records that time the tuning apart), ``fit_seconds`` (the fit; its tuning
    included where it was not timed apart), ``tune_seconds`` (NaN where no record timed it),
    ``eval_seconds``, ``seconds`` (their sum) and ``share`` (of the config's total), sorted by
    ``seconds``, largest first."""
    rows = _method_rows(cfg)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    df["model"] = df["model"].fillna("?")
    table = (
        df.groupby(["notebook", "model", "method"], sort=True)
        .agg(
            records=("method", "size"),
            fits_reused=("fits_reused", "sum"),
            tuning_timed=("tuning_timed", "sum"),
            fit_seconds=("fit_seconds", "sum"),
            tune_seconds=("tune_seconds", _sum_or_nan),
            eval_seconds=("eval_seconds", "sum"),
        )
        .reset_index()
    )
    table["seconds"] = (
        table["fit_seconds"] + table["tune_seconds"].fillna(0.0) + table["eval_seconds"]
    )
    total = table["seconds"].sum()
    table["share"] = table["seconds"] / total if total > 0 else 0.0
    return table.sort_values("seconds", ascending=False, kind="stable").reset_index(drop=True)[
        COLUMNS
    ]


def method_shares(cfg: ArchivedConfig) -> pd.DataFrame:
    """`cost_table` summed over notebooks: fit, tuning, evaluation and total seconds and the
    share per (model, method)."""
    table = cost_table(cfg)
    if table.empty:
        return pd.DataFrame(
            columns=[
                "model",
                "method",
                "fit_seconds",
                "tune_seconds",
                "eval_seconds",
                "seconds",
                "share",
            ]
        )
    per = (
        table.groupby(["model", "method"], sort=True)
        .agg(
            fit_seconds=("fit_seconds", "sum"),
            tune_seconds=("tune_seconds", _sum_or_nan),
            eval_seconds=("eval_seconds", "sum"),
            seconds=("seconds", "sum"),
        )
        .reset_index()
    )
    total = per["seconds"].sum()
    per["share"] = per["seconds"] / total if total > 0 else 0.0
    return per.sort_values("seconds", ascending=False, kind="stable").reset_index(drop=True)


def costs_markdown(cfg: ArchivedConfig, top: int = 12) -> str:
    """A Markdown table of ``cfg``'s `method_shares` (the ``top`` largest rows)."""
    per = method_shares(cfg).head(top)
    lines = [
        f"**{cfg.name}**: where the archived runs' time went (tuning: the choice of layer and "
        "strength, timed apart in records made since issue 43; '-' where the fit includes it)",
        "",
        "| model | method | fit s | tuning s | evaluation s | seconds | share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.model} | {r.method} | {r.fit_seconds:,.0f} | "
        f"{'-' if pd.isna(r.tune_seconds) else f'{r.tune_seconds:,.0f}'} | "
        f"{r.eval_seconds:,.0f} | {r.seconds:,.0f} | {r.share:.0%} |"
        for r in per.itertuples()
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="castlib report",
        description="Print each archived config's wall time per notebook and where its runs "
        "spent it: seconds per "
        "model and method (fit, tuning where timed apart, evaluation), from the archive alone.",
    )
    parser.add_argument("--archive", default="papermill_runs/results", type=Path)
    parser.add_argument("--top", type=int, default=12, help="rows per config (default 12)")
    parser.add_argument("--full", action="store_true", help="per notebook, every row")
    args = parser.parse_args(argv)
    folders = archive_configs(args.archive)
    if not folders:
        print(f"no archived config under {args.archive}")
        return 1
    for folder in folders:
        cfg = load_archive(folder)
        print(f"{cfg.name}: {wall_time_text(cfg) or 'no wall time recorded'}\n")
        if args.full:
            print(f"## {cfg.name}\n")
            print(cost_table(cfg).to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
        else:
            print(costs_markdown(cfg, args.top))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
