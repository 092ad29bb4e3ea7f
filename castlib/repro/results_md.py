"""The README's main tables, computed from the archived batch records (never typed in).

``python -m castlib.repro.results_md [--archive papermill_runs/results] [--readme README.md]``
rewrites the block of ``README.md`` between `BEGIN` and `END` with, for every archived config
that is not superseded and every model it ran, the main tables of notebooks 02 and 03
(`castlib.repro.claims.main_table`: per target, zero-shot, CAST and the best label-free baseline
with 95% paired-bootstrap intervals over test rows, CAST's paired differences with their
interval and exact McNemar p, where the records keep per-example predictions; mean +- std over
seeds otherwise), how many of the config's runs the table rests on, and one computed line per
comparison counting the targets where the interval excludes zero either way. ``--check``
writes nothing and exits 1 when the README's block differs from the archive's (the test suite
runs the same comparison). Nothing here loads a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..stats import N_BOOT
from . import claims as C
from .report import ArchivedConfig, archive_configs, load_archive

__all__ = ["BEGIN", "END", "main_tables_markdown", "replace_block"]

BEGIN = "<!-- main-tables:begin (python -m castlib.repro.results_md; do not edit by hand) -->"
END = "<!-- main-tables:end -->"
NOTEBOOKS = ("02_cross_domain", "03_cross_lingual")


def _comparison_line(main: C.MainTable, versus: str) -> str:
    part = (
        main.comparisons[main.comparisons["versus"] == versus]
        if not main.comparisons.empty
        else main.comparisons
    )
    if part.empty:
        return f"- CAST against {versus}: no comparison in these records."
    if not main.paired:
        return (
            f"- CAST against {versus}: differences of means only over {len(part)} target(s); "
            "no per-example predictions, so nothing is resolved."
        )
    better = part.loc[part["low"] > 0, "target"].tolist()
    worse = part.loc[part["high"] < 0, "target"].tolist()
    ns = sorted({int(n) for n in part["n"].dropna()})
    rest = len(part) - len(better) - len(worse)

    def names(xs: list[str]) -> str:
        return f" ({', '.join(xs)})" if xs else ""

    return (
        f"- CAST against {versus}: better on {len(better)}{names(better)}, worse on "
        f"{len(worse)}{names(worse)}, not resolved on {rest} of {len(part)} target(s) "
        f"(95% paired-bootstrap interval of the difference; n = {', '.join(map(str, ns))} rows)."
    )


def _section(cfg: ArchivedConfig, stem: str, model: str, rows: pd.DataFrame, n_boot: int) -> str:
    main = C.main_table(rows, cfg.predictions, n_boot=n_boot)
    run_ids = [r for r in cfg.run_dirs if r.split("/")[0] == stem]
    expected = [r for r in cfg.expected or [] if r.split("/")[0] == stem]
    have = f"{len(run_ids)} of {len(expected)}" if expected else str(len(run_ids))
    lines = [
        f"#### {stem}: `{cfg.name}`, {model}",
        "",
        f"{have} run(s) of `papermill_runs/{cfg.name}.yaml` archived; {main.statistic}.",
        "",
        main.table.to_markdown(index=False),
        "",
        _comparison_line(main, "zero-shot"),
        _comparison_line(main, "best label-free"),
    ]
    return "\n".join(lines)


def main_tables_markdown(
    archive: str | Path = "papermill_runs/results",
    root: str | Path | None = None,
    n_boot: int = N_BOOT,
) -> str:
    """The README block's content (without the markers): see the module docstring.
    ``root``: the repository (default: ``archive``'s grandparent)."""
    archive = Path(archive)
    if not archive.is_dir():
        raise FileNotFoundError(f"archive folder not found: {archive}")
    root = Path(root) if root is not None else archive.resolve().parents[1]
    folders = archive_configs(archive)
    sections, skipped = [], []
    for folder in folders:
        cfg = load_archive(folder, root)
        if cfg.superseded is not None:
            skipped.append(f"`{cfg.name}` (superseded: {cfg.superseded})")
            continue
        s = cfg.summary
        if "notebook" not in s:
            continue
        for stem in NOTEBOOKS:
            rows = s[s["notebook"].map(C.notebook_stem) == stem].dropna(subset=["accuracy"])
            if rows.empty:
                continue
            models = rows.groupby("model", sort=True) if "model" in rows else [("?", rows)]
            for model, part in models:
                sections.append(_section(cfg, stem, str(model), part, n_boot))
    if not sections:
        sections.append("No archived run of notebooks 02 or 03 yet.")
    if skipped:
        sections.append("Not tabulated here: " + "; ".join(skipped) + ".")
    return "\n\n".join(sections)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the `BEGIN` and `END` lines replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {BEGIN!r} ... {END!r} block")
    return text[: start + len(BEGIN)] + "\n\n" + block.strip() + "\n\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m castlib.repro.results_md",
        description="Rewrite the README's main tables from the archived records (no model).",
    )
    parser.add_argument("--archive", type=Path, default=Path("papermill_runs/results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if not args.archive.is_dir():
        parser.error(f"archive folder not found: {args.archive}")
    text = args.readme.read_text(encoding="utf-8")
    try:
        new = replace_block(text, main_tables_markdown(args.archive, n_boot=args.n_boot))
    except ValueError as exc:
        parser.error(str(exc))
    if args.check:
        if new != text:
            print(
                f"{args.readme}: main tables differ from the archive; run python -m castlib.repro.results_md"
            )
            return 1
        print(f"{args.readme}: main tables match the archive")
        return 0
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: main tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
