"""The archived batch records of the reproduction, read back: which runs each config's archive
holds and what they cost.

* `load_archive` reads one archive folder (``<archive>/<config>``): its aggregated
  ``summary.csv``, ``predictions.jsonl.gz`` (None when absent) and its ok runs, and with the
  repository root, the runs ``papermill_runs/<config>.yaml`` expands to (so `ArchivedConfig.missing`
  names the runs not archived); `archive_configs` lists an archive's config folders;
* `wall_time` and `wall_time_text`: the measured wall time of a config's archived runs per
  notebook; ``python -m castlib.repro.report [--archive papermill_runs/results]`` prints it.

The results themselves (main tables, claims, figures, every archived executed notebook) are
pages of the documentation site (``make docs``; `castlib.repro.results_pages`). Nothing here
loads a model.

Archive layout (`castlib.repro.archive`): ``<archive>/<config>/<notebook stem>/<grid point>/``
with ``run.json``, ``results.json``, CSV tables, PNG figures and ``<notebook stem>.ipynb``; the
config folder holds the aggregated ``summary.csv`` and, where the runs kept per-example
predictions, ``predictions.jsonl.gz``. ``papermill_runs/<config>.yaml``, when present, says which
runs the archive should hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import runs as R

__all__ = [
    "ArchivedConfig",
    "archive_configs",
    "load_archive",
    "wall_time",
    "wall_time_text",
]


@dataclass
class ArchivedConfig:
    """One archive folder: its records and which runs of its config it holds."""

    name: str
    folder: Path
    summary: pd.DataFrame
    predictions: list[dict[str, Any]] | None
    run_dirs: dict[str, Path] = field(default_factory=dict)
    expected: list[str] | None = None
    expected_note: str = ""
    superseded: str | None = None  # the config's ``superseded`` text (whitespace folded)
    seconds: dict[str, float] = field(default_factory=dict)  # run id -> wall seconds (run.json)

    @property
    def missing(self) -> list[str]:
        """Runs of the config that the archive does not hold."""
        return [r for r in self.expected or [] if r not in self.run_dirs]

    @property
    def models(self) -> list[str]:
        if "model" not in self.summary:
            return []
        return sorted(str(m) for m in self.summary["model"].dropna().unique())


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (configs name notebooks relative to the repository root)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _expected_runs(config: Path, root: Path) -> tuple[list[str] | None, str, str | None]:
    """The run ids ``config`` expands to, a note when it cannot be read, and its
    ``superseded`` text (whitespace folded; None when it is current or absent)."""
    if not config.is_file():
        return None, f"no {config.name} to compare with", None
    try:
        with _cwd(root):
            cfg = R.load_config(config)
    except (R.ConfigError, ValueError, OSError) as exc:
        return None, f"{config.name} could not be read: {exc}", None
    superseded = " ".join(cfg.superseded.split()) if cfg.superseded else None
    return [r.run_id for r in cfg.runs], "", superseded


def archive_configs(archive: str | Path) -> list[Path]:
    """The config folders of an archive (``<archive>/<config>/summary.csv`` present), sorted by
    name; empty when ``archive`` is not a folder or holds none."""
    archive = Path(archive)
    if not archive.is_dir():
        return []
    return sorted(p for p in archive.iterdir() if (p / R.SUMMARY_FILE).is_file())


def load_archive(folder: str | Path, root: str | Path | None = None) -> ArchivedConfig:
    """Read one archive folder (``<archive>/<config>``): its aggregated ``summary.csv``,
    ``predictions.jsonl.gz`` (None when absent) and its ok runs; with ``root`` (the repository),
    also the run ids ``root/papermill_runs/<config>.yaml`` expands to."""
    folder = Path(folder)
    summary_file = folder / R.SUMMARY_FILE
    if not summary_file.is_file():
        raise FileNotFoundError(
            f"{summary_file} not found: aggregate the archive first "
            f"(python -m castlib.repro.runs --aggregate-only {folder})"
        )
    summary = pd.read_csv(summary_file)
    try:
        predictions: list[dict[str, Any]] | None = R.load_predictions(folder)
    except FileNotFoundError:
        predictions = None
    run_dirs, seconds = {}, {}
    for path in sorted(folder.rglob(R.RUN_FILE)):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") == "ok":
            run_id = str(record.get("run_id") or path.parent.relative_to(folder).as_posix())
            run_dirs[run_id] = path.parent
            if isinstance(record.get("seconds"), (int, float)):
                seconds[run_id] = float(record["seconds"])
    expected, note, superseded = (None, "", None)
    if root is not None:
        expected, note, superseded = _expected_runs(
            Path(root) / "papermill_runs" / f"{folder.name}.yaml", Path(root)
        )
    return ArchivedConfig(
        folder.name, folder, summary, predictions, run_dirs, expected, note, superseded, seconds
    )


def wall_time(cfg: ArchivedConfig) -> pd.DataFrame:
    """The measured cost of ``cfg``'s archived runs: one row per notebook stem and a last row
    ``all``, with ``runs`` (archived ok runs with a wall time), ``seconds`` (their sum), ``min``
    and ``max`` (one run's), ``hours`` (the sum in hours). Each run's wall time is the
    ``seconds`` of its ``run.json`` (`castlib.repro.runs`: papermill's execution of the notebook,
    model loading included), so the rows are what the batch took on the machine that ran it."""
    if not cfg.seconds:
        return pd.DataFrame(columns=["notebook", "runs", "seconds", "min", "max", "hours"])
    runs = pd.DataFrame(
        {"notebook": [r.split("/")[0] for r in cfg.seconds], "seconds": list(cfg.seconds.values())}
    )
    per = runs.groupby("notebook", sort=True)["seconds"].agg(["count", "sum", "min", "max"])
    per.loc["all"] = [
        len(runs),
        runs["seconds"].sum(),
        runs["seconds"].min(),
        runs["seconds"].max(),
    ]
    per = per.rename(columns={"count": "runs", "sum": "seconds"}).reset_index()
    per["runs"] = per["runs"].astype(int)
    per["hours"] = per["seconds"] / 3600
    return per


def wall_time_text(cfg: ArchivedConfig) -> str:
    """`wall_time` in one line, e.g. ``"17.7 h over 33 runs (63,635 s): 00_quickstart 274 s;
    02_cross_domain 40,023 s over 15 runs (1,841-3,969 s each)"``; ``""`` without wall times."""
    table = wall_time(cfg)
    if table.empty:
        return ""
    total = table.iloc[-1]
    parts = []
    for row in table.iloc[:-1].itertuples():
        text = f"{row.notebook} {row.seconds:,.0f} s"
        if row.runs > 1:
            text += f" over {row.runs} runs ({row.min:,.0f}-{row.max:,.0f} s each)"
        parts.append(text)
    n = int(total["runs"])
    return (
        f"{total['hours']:.1f} h over {n} run{'s' if n != 1 else ''} "
        f"({total['seconds']:,.0f} s): " + "; ".join(parts)
    )


def _print_wall_time(archive: Path) -> int:
    folders = archive_configs(archive)
    if not folders:
        raise FileNotFoundError(f"no archive under {archive} (no <config>/{R.SUMMARY_FILE})")
    for folder in folders:
        table = wall_time(load_archive(folder))
        print(f"{folder.name}:")
        print(table.to_string(index=False, float_format=lambda x: f"{x:,.1f}") + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m castlib.repro.report [--archive DIR]`` prints each archived
    config's measured wall time per notebook (``--wall-time``, the default, is accepted)."""
    parser = argparse.ArgumentParser(
        prog="python -m castlib.repro.report",
        description="Print each archived config's measured wall time per notebook (no model). "
        "The results pages are part of the documentation site: make docs.",
    )
    parser.add_argument("--archive", type=Path, default=Path("papermill_runs/results"))
    parser.add_argument("--wall-time", action="store_true", help="(the default)")
    args = parser.parse_args(argv)
    try:
        return _print_wall_time(args.archive)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
