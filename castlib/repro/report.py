"""A static HTML report of the reproduction, built from the archived batch records alone.

``python -m castlib.repro.report [--archive papermill_runs/results] [--out report]`` (``make report``)
writes, without loading a model:

* ``report/index.html``: the archives (which runs of each config are archived, which are not,
  and their measured wall time: `wall_time`; ``--wall-time`` prints it and builds nothing),
  one verdict paragraph per claim of the paper (`castlib.repro.claims`), and one section per
  notebook whose HTML id is the notebook stem (``index.html#02_cross_domain``) with the main
  tables of every config and model (`castlib.repro.claims.main_table`), the headline figures
  (matplotlib PNGs drawn from the records into ``report/figures/``) and the archived runs;
* ``report/<config>/<notebook stem>/<grid point>.html``: one page per archived executed
  notebook, exported by nbconvert's HTML exporter (lab template without its CDN scripts:
  ``castlib/templates/report_notebook.html.j2``; images embedded). When the archived notebook
  lost its image outputs (`castlib.repro.archive`), the run's PNG figures are embedded at its end;
* ``report/<config>/<notebook stem>/<grid point>/*.png``: the run's archived figures.

Archive layout (`castlib.repro.archive`): ``<archive>/<config>/<notebook stem>/<grid point>/`` with
``run.json``, ``results.json``, CSV tables, PNG figures and ``<notebook stem>.ipynb``; the
config folder holds the aggregated ``summary.csv`` and, where the runs kept per-example
predictions, ``predictions.jsonl.gz``. ``papermill_runs/<config>.yaml``, when present, says
which runs the archive should hold. Pages and index use no http(s) script or stylesheet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from ..stats import N_BOOT
from . import claims as C
from . import runs as R
from .archive import DROPPED_IMAGE_NOTE

__all__ = [
    "ArchivedConfig",
    "archive_configs",
    "build_report",
    "load_archive",
    "notebook_page",
    "wall_time",
    "wall_time_text",
]

TEMPLATES = Path(__file__).parent / "templates"
INDEX_TEMPLATE = "report_index.html.j2"
NOTEBOOK_TEMPLATE = "report_notebook.html.j2"
MAIN_NOTEBOOKS = ("00_quickstart", "02_cross_domain", "03_cross_lingual")


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


# --------------------------------------------------------------------------- figures


MAX_INLINE_RUNS = 2  # runs whose archived figures are shown inline when none is computed


def _main_figure(long: pd.DataFrame, title: str, path: Path) -> Path:
    """Grouped bars: accuracy of zero-shot, CAST and the best label-free baseline per target,
    with their interval (or +- std) as error bars."""
    import numpy as np
    from matplotlib.figure import Figure

    targets = sorted(long["target"].unique())
    present = set(long.loc[long["accuracy"].notna(), "role"])
    roles = [r for r in ("zero-shot", "CAST", "best label-free") if r in present]
    fig = Figure(figsize=(max(5.0, 1.6 * len(targets) + 2.0), 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(roles)
    x = np.arange(len(targets))
    for i, role in enumerate(roles):
        part = long[long["role"] == role].set_index("target").reindex(targets)
        acc = part["accuracy"].to_numpy(dtype=float)
        err = np.vstack([acc - part["low"].to_numpy(float), part["high"].to_numpy(float) - acc])
        ax.bar(
            x + (i - (len(roles) - 1) / 2) * width,
            acc,
            width,
            yerr=np.nan_to_num(err),
            capsize=3,
            label=role,
        )
    ax.set_xticks(x, targets, rotation=20 if len(targets) > 3 else 0)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _consistency_figure(rows: pd.DataFrame, title: str, path: Path) -> Path | None:
    """Notebook 01: cross-task cosine per layer against the split-half ceiling and the
    random floor."""
    from matplotlib.figure import Figure

    layers = C.consistency_layers(rows)
    if layers.empty:
        return None
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for col, style in (("cross_task_cosine", "-o"), ("ceiling", "--"), ("floor", ":")):
        ax.plot(layers["layer"], layers[col], style, label=col.replace("_", " "))
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine")
    ax.set_title(title)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- notebook pages


def notebook_page(notebook: str | Path, html_out: str | Path) -> Path:
    """Export an archived executed notebook to one offline HTML page (nbconvert, lab template
    without CDN scripts, images embedded). Image outputs the archive dropped are replaced by
    the run's PNG figures (the ``*.png`` beside the notebook), embedded at the end."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    notebook, html_out = Path(notebook), Path(html_out)
    nb = nbformat.read(notebook, as_version=4)
    pngs = sorted(p.name for p in notebook.parent.glob("*.png"))
    if pngs and DROPPED_IMAGE_NOTE in notebook.read_text(encoding="utf-8"):
        links = "\n\n".join(f"![{name}]({name})" for name in pngs)
        nb.cells.append(nbformat.v4.new_markdown_cell(f"## Figures of this run\n\n{links}"))
    loader = jinja2.FileSystemLoader(str(TEMPLATES))
    exporter = HTMLExporter(
        template_name="lab",
        template_file=NOTEBOOK_TEMPLATE,
        extra_loaders=[loader],
        embed_images=True,
    )
    resources = {"metadata": {"path": str(notebook.parent), "name": notebook.stem}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    html_out.parent.mkdir(parents=True, exist_ok=True)
    html_out.write_text(body, encoding="utf-8")
    return html_out


# --------------------------------------------------------------------------- the site


def _rows_of(cfg: ArchivedConfig, stem: str) -> pd.DataFrame:
    s = cfg.summary
    if "notebook" not in s or s.empty:
        return s.iloc[0:0]
    return s[s["notebook"].map(C.notebook_stem) == stem]


def _by_model(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if rows.empty:
        return []
    if "model" not in rows:
        return [("unknown model", rows)]
    return [(str(m), part) for m, part in rows.groupby("model", sort=True)]


def _slug(*parts: str) -> str:
    return "__".join(R.safe_name(p) for p in parts)


def build_report(
    archive: str | Path = "papermill_runs/results",
    out: str | Path = "report",
    root: str | Path | None = None,
    n_boot: int = N_BOOT,
) -> Path:
    """Build the report (see the module docstring) from every config folder of ``archive``
    that holds a ``summary.csv``; returns the index path. ``root``: the repository, whose
    ``papermill_runs/<config>.yaml`` say which runs are expected (default: ``archive``'s
    grandparent when it is ``<repo>/papermill_runs/results``)."""
    import jinja2

    archive, out = Path(archive), Path(out)
    if not archive.is_dir():
        raise FileNotFoundError(f"archive folder not found: {archive}")
    if root is None and archive.resolve().parent.name == "papermill_runs":
        root = archive.resolve().parents[1]
    configs = [load_archive(folder, root) for folder in archive_configs(archive)]
    if not configs:
        raise FileNotFoundError(f"no archive under {archive} (no <config>/{R.SUMMARY_FILE})")
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)

    stems = list(dict.fromkeys([c.notebook for c in C.CLAIMS]))
    for cfg in configs:
        found = [C.notebook_stem(n) for n in cfg.summary.get("notebook", pd.Series()).dropna()]
        found += [run_id.split("/")[0] for run_id in cfg.run_dirs]
        stems += [s for s in dict.fromkeys(found) if s not in stems]

    notebooks = []
    verdicts: dict[str, list[dict[str, str]]] = {stem: [] for stem in stems}
    for stem in stems:
        parts = []
        for cfg in configs:
            rows = _rows_of(cfg, stem)
            run_ids = [r for r in cfg.run_dirs if r.split("/")[0] == stem]
            missing = [r for r in cfg.missing if r.split("/")[0] == stem]
            if rows.empty and not run_ids and not missing:
                continue
            part = _section_part(cfg, stem, rows, run_ids, missing, out, n_boot)
            parts.append(part)
            claim = next((c for c in C.CLAIMS if c.notebook == stem), None)
            if claim is not None:
                for model, model_rows in _by_model(rows) or [("all models", rows)]:
                    text = C.claim_paragraph(claim, model_rows, cfg.predictions, n_boot=n_boot)
                    if missing and not rows.empty:
                        text += f" ({len(missing)} run(s) of the config are not archived.)"
                    verdicts[stem].append({"config": cfg.name, "model": model, "text": text})
        notebooks.append({"stem": stem, "parts": parts})

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    html = env.get_template(INDEX_TEMPLATE).render(
        archive=archive.as_posix(),
        configs=[
            {
                "name": c.name,
                "models": c.models,
                "n_archived": len(c.run_dirs),
                "n_expected": None if c.expected is None else len(c.expected),
                "missing": c.missing,
                "expected_note": c.expected_note or "unknown",
                "wall_time": wall_time_text(c) or "not recorded",
            }
            for c in configs
        ],
        claims=[
            {
                "notebook": c.notebook,
                "title": c.title,
                "quote": c.quote,
                "verdicts": verdicts.get(c.notebook, []),
            }
            for c in C.CLAIMS
        ],
        notebooks=notebooks,
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def _section_part(
    cfg: ArchivedConfig,
    stem: str,
    rows: pd.DataFrame,
    run_ids: Sequence[str],
    missing: Sequence[str],
    out: Path,
    n_boot: int,
) -> dict[str, Any]:
    tables, figures = [], []
    for model, model_rows in _by_model(rows):
        title = f"{stem}, {cfg.name}, {model}"
        if stem in MAIN_NOTEBOOKS and {"target", "method", "accuracy"} <= set(model_rows):
            try:
                main = C.main_table(model_rows, cfg.predictions, n_boot=n_boot)
            except ValueError as exc:
                warnings.warn(f"{title}: no main table: {exc}", stacklevel=2)
                continue
            tables.append(
                {
                    "model": model,
                    "statistic": main.statistic,
                    "html": main.table.to_html(index=False, border=0, classes="main", escape=True),
                }
            )
            if not main.long.empty:
                bars = "95% paired-bootstrap interval" if main.paired else "+- std over seeds"
                png = _main_figure(
                    main.long, title, out / "figures" / f"{_slug(cfg.name, model, stem)}.png"
                )
                figures.append(
                    {
                        "src": png.relative_to(out).as_posix(),
                        "alt": f"accuracy (error bars: {bars}): {title}",
                    }
                )
        elif stem == "01_activation_patterns":
            png = _consistency_figure(
                model_rows, title, out / "figures" / f"{_slug(cfg.name, model, stem)}.png"
            )
            if png is not None:
                figures.append(
                    {"src": png.relative_to(out).as_posix(), "alt": f"cross-task cosine: {title}"}
                )
    runs = []
    for run_id in run_ids:
        run_dir = cfg.run_dirs[run_id]
        grid = run_id.split("/", 1)[1] if "/" in run_id else run_id
        dest = out / cfg.name / stem
        pngs = []
        for png in sorted(run_dir.glob("*.png")):
            (dest / grid).mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, dest / grid / png.name)
            pngs.append((dest / grid / png.name).relative_to(out).as_posix())
        page = None
        ipynb = run_dir / f"{stem}.ipynb"
        if not ipynb.is_file():
            found = sorted(run_dir.glob("*.ipynb"))
            ipynb = found[0] if found else ipynb
        if ipynb.is_file():
            page = notebook_page(ipynb, dest / f"{grid}.html").relative_to(out).as_posix()
        runs.append({"grid": escape(grid), "page": page, "pngs": pngs})
    if not figures and len(runs) <= MAX_INLINE_RUNS:
        # no figure computed from the records (notebooks 04-07): the runs' own archived figures
        # are this notebook's headline figures
        for run in runs:
            for src in run["pngs"]:
                figures.append(
                    {"src": src, "alt": f"{Path(src).name}: {stem}, {cfg.name}, {run['grid']}"}
                )
    return {
        "config": cfg.name,
        "missing": list(missing),
        "tables": tables,
        "figures": figures,
        "runs": runs,
    }


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
    """Command line: ``python -m castlib.repro.report [--archive DIR] [--out DIR] [--n-boot N]
    [--wall-time]``."""
    parser = argparse.ArgumentParser(
        prog="python -m castlib.repro.report",
        description="Build the static HTML report from the archived batch records (no model).",
    )
    parser.add_argument("--archive", type=Path, default=Path("papermill_runs/results"))
    parser.add_argument("--out", type=Path, default=Path("report"))
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument(
        "--wall-time",
        action="store_true",
        help="print each archived config's measured wall time per notebook and build nothing",
    )
    args = parser.parse_args(argv)
    try:
        if args.wall_time:
            return _print_wall_time(args.archive)
        index = build_report(args.archive, args.out, n_boot=args.n_boot)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(f"report written: {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
