"""Aggregating a batch: its records into tables, per-example predictions and figures.

Aggregation
-----------
``aggregate(output_dir)`` reads every ``run.json`` under ``output_dir``; the records of ok runs go
to ``summary.csv`` with ``run_id``, ``notebook`` and one column per run parameter (``param_<name>``
where the name collides with a record column), every run goes to ``runs.csv`` (``run_id``,
``notebook``, ``status``, ``seconds``, ``error``, ``error_cell``, parameters), and seaborn bar plots
of ``accuracy`` (by ``target``/``method``, and by each varying parameter) go to ``figures/`` when
those columns exist. Per-example predictions (the records' ``predictions``) stay out of
summary.csv: they go to ``predictions.jsonl.gz`` (gzip, one JSON line per record with ``run_id``,
``record`` (its index in results.json), `PREDICTION_ID_KEYS` and ``predictions``; written
byte-for-byte reproducibly), which `load_predictions` reads back for `castlib.stats`.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .layout import (
    FIGURES_DIR,
    PREDICTION_ID_KEYS,
    PREDICTIONS_FILE,
    PREDICTIONS_KEY,
    RESULTS_FILE,
    RUN_FILE,
    RUNS_TABLE_FILE,
    STAGING_DIR,
    SUMMARY_FILE,
    read_json,
    result_records,
    safe_name,
)

__all__ = ["aggregate", "load_predictions", "plot_summary"]


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _param_columns(params: Mapping[str, Any], taken: set[str]) -> dict[str, Any]:
    return {(f"param_{k}" if k in taken else k): _cell(v) for k, v in params.items()}


def aggregate(output_dir: str | Path, *, figures: bool = True) -> pd.DataFrame:
    """Collect every run under ``output_dir`` into summary.csv, runs.csv and figures/.

    Returns the summary table: one row per results.json record of each ok run, with ``run_id``,
    ``notebook`` and the run parameters (``param_<name>`` when a record has the same column).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output directory not found: {output_dir}")
    runs: list[dict[str, Any]] = []
    for path in sorted(output_dir.rglob(RUN_FILE)):
        if STAGING_DIR in path.relative_to(output_dir).parts:
            continue  # a forced rerun in progress or interrupted (see execute_run)
        try:
            record = read_json(path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable {path}: {exc}", stacklevel=2)
            continue
        if isinstance(record, dict):
            record.setdefault("run_id", path.parent.relative_to(output_dir).as_posix())
            runs.append({**record, "_dir": path.parent})
    if not runs:
        warnings.warn(f"no {RUN_FILE} found under {output_dir}", stacklevel=2)

    results: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for run in runs:
        if run.get("status") != "ok":
            continue
        path = run["_dir"] / RESULTS_FILE
        try:
            results.append((run, result_records(read_json(path), path)))
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping results of {run['run_id']}: {exc}", stacklevel=2)

    record_columns = {key for _, records in results for rec in records for key in rec}
    taken = record_columns | {"run_id", "notebook"}
    taken.discard(PREDICTIONS_KEY)
    rows = []
    predictions = []
    param_columns: dict[str, None] = {}
    for run, records in results:
        ident = {"run_id": run["run_id"], "notebook": run.get("notebook")}
        params = _param_columns(run.get("parameters") or {}, taken)
        param_columns.update(dict.fromkeys(params))
        for index, rec in enumerate(records):
            rows.append(
                {**ident, **params, **{k: v for k, v in rec.items() if k != PREDICTIONS_KEY}}
            )
            if rec.get(PREDICTIONS_KEY) is not None:
                predictions.append(_prediction_line(run["run_id"], index, rec))
    summary = pd.DataFrame(rows, columns=None if rows else ["run_id", "notebook"])

    table_columns = {"run_id", "notebook", "status", "seconds", "error", "error_cell"}
    table = pd.DataFrame(
        [
            {
                "run_id": run["run_id"],
                "notebook": run.get("notebook"),
                "status": run.get("status"),
                "seconds": run.get("seconds"),
                "error": _error_text(run.get("error")),
                "error_cell": ((run.get("error") or {}).get("cell") or {}).get("index"),
                **_param_columns(run.get("parameters") or {}, table_columns),
            }
            for run in runs
        ],
        columns=None if runs else sorted(table_columns),
    )
    table["error_cell"] = table["error_cell"].astype("Int64")
    summary.to_csv(output_dir / SUMMARY_FILE, index=False)
    table.to_csv(output_dir / RUNS_TABLE_FILE, index=False)
    _write_predictions(output_dir / PREDICTIONS_FILE, predictions)
    if figures:
        plot_summary(summary, output_dir / FIGURES_DIR, parameters=list(param_columns))
    return summary


def _prediction_line(run_id: str, index: int, rec: Mapping[str, Any]) -> dict[str, Any]:
    preds = rec[PREDICTIONS_KEY]
    if isinstance(preds, str):  # flat records (nbtools.flat_record) hold it as JSON text
        preds = json.loads(preds)
    ident = {k: rec[k] for k in PREDICTION_ID_KEYS if k in rec}
    return {"run_id": run_id, "record": index, **ident, PREDICTIONS_KEY: preds}


def _write_predictions(path: Path, lines: list[dict[str, Any]]) -> None:
    """Write the prediction lines (gzip with mtime 0: the same records give the same bytes);
    remove a stale file when there are none."""
    if not lines:
        path.unlink(missing_ok=True)
        return
    text = "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(text.encode("utf-8"))
    tmp.replace(path)


def load_predictions(output_dir: str | Path) -> list[dict[str, Any]]:
    """The per-example prediction lines of an aggregated batch (``predictions.jsonl.gz``):
    one dict per record with ``run_id``, ``record``, `PREDICTION_ID_KEYS` and
    ``predictions``, ready for `castlib.stats.target_table`."""
    path = Path(output_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: aggregate the batch first (castlib run "
            f"--aggregate-only {output_dir}); records written before castlib kept per-example "
            "predictions have none"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error)


def plot_summary(
    summary: pd.DataFrame,
    figures_dir: str | Path,
    *,
    parameters: Iterable[str] = (),
    metric: str = "accuracy",
) -> list[Path]:
    """Draw seaborn bar plots of ``metric`` when the columns allow; returns the files written.

    One set of figures per notebook (a batch's notebooks measure different things, so their rows
    are never pooled; file names start with the notebook's stem when the summary holds more than
    one): ``metric`` by ``target`` (hue ``method``) or by ``method``, and by each column named in
    ``parameters`` that takes 2-20 distinct values and is not determined by ``target`` or
    ``method`` (a grid column that only groups methods or targets into runs shows nothing those
    plots do not). Bars are means, error bars the standard deviation over rows; the legend sits
    beside the axes. Draws nothing when ``metric`` is missing or not numeric. Uses matplotlib's
    Agg canvas through ``Figure`` without touching pyplot state.
    """
    if metric not in summary or not pd.api.types.is_numeric_dtype(summary[metric]):
        return []
    data = summary.dropna(subset=[metric])
    if data.empty:
        return []
    figures_dir = Path(figures_dir)
    notebooks = sorted(data["notebook"].dropna().astype(str).unique()) if "notebook" in data else []
    if len(notebooks) <= 1:
        return _plot_notebook(data, figures_dir, "", parameters, metric)
    written = []
    for notebook in notebooks:
        part = data[data["notebook"].astype(str) == notebook]
        prefix = safe_name(Path(notebook).stem) + "_"
        written += _plot_notebook(part, figures_dir, prefix, parameters, metric)
    return written


def _determined_by(data: pd.DataFrame, col: str, by: str) -> bool:
    """Whether every value of ``by`` comes with one value of ``col`` in ``data``."""
    if by not in data:
        return False
    pairs = data[[by, col]].astype(str)
    return bool((pairs.groupby(by)[col].nunique() <= 1).all())


def _plot_notebook(
    data: pd.DataFrame, figures_dir: Path, prefix: str, parameters: Iterable[str], metric: str
) -> list[Path]:
    hue = "method" if "method" in data else None
    plots: list[tuple[str, str, str | None]] = []
    if "target" in data:
        plots.append((f"{metric}_by_target" + ("_method" if hue else ""), "target", hue))
    elif hue:
        plots.append((f"{metric}_by_method", "method", None))
    for col in parameters:
        if (
            col in data
            and col not in {"method", "target"}
            and 2 <= data[col].nunique() <= 20
            and not any(_determined_by(data, col, by) for by in ("method", "target"))
        ):
            plots.append((f"{metric}_by_{safe_name(col)}", col, hue))
    written = []
    for name, x, plot_hue in plots[:12]:
        try:
            path = figures_dir / f"{prefix}{name}.png"
            written.append(_barplot(data, x, metric, plot_hue, path))
        except Exception as exc:  # noqa: BLE001 - a figure must never lose the tables
            warnings.warn(f"could not draw {prefix}{name}: {exc}", stacklevel=2)
    return written


def _barplot(data: pd.DataFrame, x: str, y: str, hue: str | None, path: Path) -> Path:
    import seaborn as sns
    from matplotlib.figure import Figure

    n_x = data[x].nunique()
    n_hue = data[hue].nunique() if hue else 1
    legend = 2.6 if hue else 0.0
    fig = Figure(figsize=(min(30.0, max(4.0, 0.14 * n_x * n_hue + 0.5 * n_x) + legend), 4.2))
    ax = fig.add_subplot()
    order = sorted(data[x].dropna().unique(), key=_sort_key)
    sns.barplot(data=data, x=x, y=y, hue=hue, order=order, errorbar="sd", ax=ax)
    ax.set_title(f"{y} by {x}" + (f" and {hue}" if hue else "") + " (mean, sd over rows)")
    if hue and ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if n_x > 6 or max((len(str(v)) for v in order), default=0) > 14:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))
