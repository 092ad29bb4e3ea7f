"""The results of the reproduction, read from the archived batch records alone, as pages of the
documentation site.

``make docs`` builds the site (MkDocs, ``mkdocs.yml``); its hooks (`castlib.repro.site`) call
`results_pages`, which writes, without loading a model, into a folder whose layout mirrors the
repository (``build/docs/``):

* ``docs/results.md``: the archives (which runs of each config are archived, which are not, and
  their measured wall time: `castlib.repro.report.wall_time_text`), the main tables
  (`castlib.repro.results_md.main_tables_markdown`, the same generated Markdown as the README's),
  one verdict per claim of the paper and config and model
  (`castlib.repro.claims.claim_paragraph`), and one section per notebook whose anchor is the
  notebook stem (``results.html#02_cross_domain``) with the main tables of every config and model
  (`castlib.repro.claims.main_table`), the headline figures (matplotlib PNGs drawn from the
  records into ``docs/results/``; for notebooks with none drawn from the records, the archived
  figures of their runs) and every archived run, linked to its executed notebook;
* ``papermill_runs/results/<config>/<notebook stem>/index.md``: the archived runs of one notebook
  in one config, each linked to its executed notebook, records and figures;
* for an archived notebook whose image outputs the archive dropped (`castlib.repro.archive`), a
  copy at the archive's path with the run's PNG figures appended.

The site shows the archived executed notebooks themselves (mkdocs-jupyter), at their archive
paths, so each is one click from the results page.

The archive's layout: `castlib.repro.report`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..stats import N_BOOT
from . import claims as C
from . import runs as R
from .archive import DROPPED_IMAGE_NOTE
from .costs import costs_markdown
from .report import ArchivedConfig, archive_configs, load_archive, wall_time_text
from .results_md import main_tables_markdown

__all__ = ["results_pages"]

MAIN_NOTEBOOKS = ("00_quickstart", "02_cross_domain", "03_cross_lingual")
RESULTS_PAGE = "docs/results.md"
FIGURES_DIR = "docs/results"


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


# --------------------------------------------------------------------------- pages


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


def _grid(run_id: str) -> str:
    return run_id.split("/", 1)[1] if "/" in run_id else run_id


def _notebook_of(run_dir: Path, stem: str) -> Path | None:
    ipynb = run_dir / f"{stem}.ipynb"
    if ipynb.is_file():
        return ipynb
    found = sorted(run_dir.glob("*.ipynb"))
    return found[0] if found else None


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f} s"


def _stems(configs: Sequence[ArchivedConfig]) -> list[str]:
    stems = list(dict.fromkeys(c.notebook for c in C.CLAIMS))
    for cfg in configs:
        found = [C.notebook_stem(n) for n in cfg.summary.get("notebook", pd.Series()).dropna()]
        found += [run_id.split("/")[0] for run_id in cfg.run_dirs]
        stems += [s for s in dict.fromkeys(found) if s not in stems]
    return stems


def _runs_table(cfg: ArchivedConfig, stem: str, run_ids: Sequence[str], prefix: str) -> str:
    """A Markdown table of ``run_ids`` (links relative to ``prefix``, the archive folder of
    ``cfg``/``stem`` as seen from the page)."""
    lines = ["| run | executed notebook | records | figures | wall time |", "|---|---|---|---|---|"]
    for run_id in run_ids:
        run_dir, grid = cfg.run_dirs[run_id], _grid(run_id)
        ipynb = _notebook_of(run_dir, stem)
        page = f"[{ipynb.stem}]({prefix}{grid}/{ipynb.name})" if ipynb else "not archived"
        records = ", ".join(
            f"[{name}]({prefix}{grid}/{name})"
            for name in (R.RUN_FILE, R.RESULTS_FILE)
            if (run_dir / name).is_file()
        )
        pngs = ", ".join(
            f"[{p.stem}]({prefix}{grid}/{p.name})" for p in sorted(run_dir.glob("*.png"))
        )
        lines.append(
            f"| `{grid}` | {page} | {records} | {pngs} | {_seconds(cfg.seconds.get(run_id))} |"
        )
    return "\n".join(lines)


def _part(
    cfg: ArchivedConfig, stem: str, rows: pd.DataFrame, out: Path, n_boot: int
) -> tuple[list[str], int]:
    """The Markdown of one config's results for one notebook (tables, figures, runs) and the
    number of figures it shows."""
    lines: list[str] = []
    n_figures = 0
    for model, model_rows in _by_model(rows):
        title = f"{stem}, {cfg.name}, {model}"
        png, alt = None, ""
        if stem in MAIN_NOTEBOOKS and {"target", "method", "accuracy"} <= set(model_rows):
            try:
                main = C.main_table(model_rows, cfg.predictions, n_boot=n_boot)
            except ValueError as exc:
                warnings.warn(f"{title}: no main table: {exc}", stacklevel=2)
                continue
            lines += [
                f"**{model}**: {main.statistic}.",
                "",
                main.table.to_markdown(index=False),
                "",
            ]
            if not main.long.empty:
                bars = "95% paired-bootstrap interval" if main.paired else "+- std over seeds"
                png = _main_figure(main.long, title, out / FIGURES_DIR / f"{_slug(title)}.png")
                alt = f"accuracy (error bars: {bars}): {title}"
        elif stem == "01_activation_patterns":
            png = _consistency_figure(model_rows, title, out / FIGURES_DIR / f"{_slug(title)}.png")
            alt = f"cross-task cosine per layer: {title}"
        if png is not None:
            lines += [f"![{alt}](results/{png.name})", ""]
            n_figures += 1
    return lines, n_figures


def _section(cfg: ArchivedConfig, stem: str, out: Path, n_boot: int) -> list[str]:
    rows = _rows_of(cfg, stem)
    run_ids = [r for r in cfg.run_dirs if r.split("/")[0] == stem]
    missing = [r for r in cfg.missing if r.split("/")[0] == stem]
    if rows.empty and not run_ids and not missing:
        return []
    folder = f"../papermill_runs/results/{cfg.name}/{stem}/"
    lines = [f"### {stem}: `{cfg.name}` {{ #{stem}-{cfg.name} }}", ""]
    if cfg.superseded:
        lines += [f"Superseded: {cfg.superseded}.", ""]
    body, n_figures = _part(cfg, stem, rows, out, n_boot)
    lines += body
    if run_ids:
        if n_figures == 0 and len(run_ids) <= MAX_INLINE_RUNS:
            # no figure drawn from the records (notebooks 04-07): the runs' archived figures
            for run_id in run_ids:
                for p in sorted(cfg.run_dirs[run_id].glob("*.png")):
                    grid = _grid(run_id)
                    lines += [
                        f"![{p.stem}: {stem}, {cfg.name}, {grid}]({folder}{grid}/{p.name})",
                        "",
                    ]
        lines += [
            f"{len(run_ids)} archived run(s) ([the folder's page]({folder}index.md)):",
            "",
            _runs_table(cfg, stem, run_ids, folder),
            "",
        ]
    if missing:
        lines += [f"Not archived: {', '.join(f'`{m}`' for m in missing)}.", ""]
    return lines


def _folder_page(cfg: ArchivedConfig, stem: str) -> str:
    run_ids = [r for r in cfg.run_dirs if r.split("/")[0] == stem]
    lines = [
        f"# {stem}: `{cfg.name}`",
        "",
        f"The archived runs of `notebooks/{stem}.ipynb` in `papermill_runs/{cfg.name}.yaml`, "
        f"read by [the results page](../../../../docs/results.md#{stem}-{cfg.name}) "
        f"({wall_time_text(cfg) or 'no wall time recorded'}).",
        "",
        _runs_table(cfg, stem, run_ids, ""),
        "",
    ]
    return "\n".join(lines)


def _with_dropped_figures(ipynb: Path, dest: Path) -> Path | None:
    """A copy of an archived notebook whose image outputs the archive dropped, with the run's
    PNG figures (beside it in the archive) appended; None when nothing was dropped."""
    import nbformat

    pngs = sorted(p.name for p in ipynb.parent.glob("*.png"))
    if not pngs or DROPPED_IMAGE_NOTE not in ipynb.read_text(encoding="utf-8"):
        return None
    nb = nbformat.read(ipynb, as_version=4)
    links = "\n\n".join(f"![{name}]({name})" for name in pngs)
    nb.cells.append(nbformat.v4.new_markdown_cell(f"## Figures of this run\n\n{links}"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


def results_pages(
    archive: str | Path = "papermill_runs/results",
    out: str | Path = "build/docs",
    root: str | Path | None = None,
    n_boot: int = N_BOOT,
) -> list[Path]:
    """Write the site's results pages (see the module docstring) from every config folder of
    ``archive`` that holds a ``summary.csv`` into ``out``; returns the files written. ``root``:
    the repository, whose ``papermill_runs/<config>.yaml`` say which runs are expected
    (default: ``archive``'s grandparent when it is ``<repo>/papermill_runs/results``)."""
    archive, out = Path(archive), Path(out)
    if not archive.is_dir():
        raise FileNotFoundError(f"archive folder not found: {archive}")
    if root is None and archive.resolve().parent.name == "papermill_runs":
        root = archive.resolve().parents[1]
    configs = [load_archive(folder, root) for folder in archive_configs(archive)]
    if not configs:
        raise FileNotFoundError(f"no archive under {archive} (no <config>/{R.SUMMARY_FILE})")
    written: list[Path] = []
    stems = _stems(configs)
    lines = [
        "# Results",
        "",
        "Everything on this page is computed from the archived batch records in "
        "`papermill_runs/results/` ([what the archive holds](../papermill_runs/results/README.md))"
        " by `castlib.repro.results_pages` when the site is built (`make docs`): nothing is typed in and "
        "no model is loaded. A difference is called resolved only where its 95% paired-bootstrap "
        "interval excludes zero ([statistics](method.md#statistics-what-a-table-resolves)).",
        "",
        "## Archives",
        "",
        "| config | models | runs archived | not archived | wall time of the archived runs |",
        "|---|---|---|---|---|",
    ]
    for c in configs:
        expected = "?" if c.expected is None else str(len(c.expected))
        missing = ", ".join(f"`{m}`" for m in c.missing) or "none"
        if c.expected is None:
            missing = c.expected_note or "unknown"
        lines.append(
            f"| `{c.name}`{' (superseded)' if c.superseded else ''} | {', '.join(c.models)} | "
            f"{len(c.run_dirs)} of {expected} | {missing} | {wall_time_text(c) or 'not recorded'} |"
        )
    lines += ["", "## Where the time goes", ""]
    lines += [
        "Seconds per model and method summed over each config's archived runs "
        "(`castlib.repro.costs`; `castlib report` prints the same): a fit reloaded from the fit "
        "store counts once, in the run that made it; `(outside methods)` is loading the model, "
        "analyses and writing.",
        "",
    ]
    for c in configs:
        lines += [costs_markdown(c), ""]
    lines += ["## Main tables", "", main_tables_markdown(archive, root, n_boot=n_boot), ""]
    lines += ["## The paper's claims, judged from the records", ""]
    for claim in C.CLAIMS:
        lines += [
            f"### {claim.title} ({claim.notebook}) {{ #claim-{claim.notebook} }}",
            "",
            f'> "{claim.quote}" ([the notebook\'s results](#{claim.notebook}))',
            "",
        ]
        for cfg in configs:
            rows = _rows_of(cfg, claim.notebook)
            missing = [r for r in cfg.missing if r.split("/")[0] == claim.notebook]
            for model, model_rows in _by_model(rows):
                text = C.claim_paragraph(claim, model_rows, cfg.predictions, n_boot=n_boot)
                if missing:
                    text += f" ({len(missing)} run(s) of the config are not archived.)"
                lines += [f"- `{cfg.name}`, {model}: {text}"]
        lines.append("")
    lines += ["## Notebook by notebook", ""]
    for stem in stems:
        source = f"../notebooks/{stem}.ipynb"
        lines += [f"## {stem} {{ #{stem} }}", ""]
        if root is not None and (Path(root) / "notebooks" / f"{stem}.ipynb").is_file():
            lines += [f"[The notebook]({source}), as committed (a CI-sized run).", ""]
        for cfg in configs:
            lines += _section(cfg, stem, out, n_boot)
            run_ids = [r for r in cfg.run_dirs if r.split("/")[0] == stem]
            if not run_ids:
                continue
            page = out / "papermill_runs" / "results" / cfg.name / stem / "index.md"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(_folder_page(cfg, stem), encoding="utf-8")
            written.append(page)
            for run_id in run_ids:
                ipynb = _notebook_of(cfg.run_dirs[run_id], stem)
                if ipynb is not None:
                    rel = ipynb.relative_to(archive)
                    copy = _with_dropped_figures(ipynb, out / "papermill_runs" / "results" / rel)
                    written += [copy] if copy else []
    page = out / RESULTS_PAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    written.append(page)
    written += sorted((out / FIGURES_DIR).glob("*.png"))
    return written
