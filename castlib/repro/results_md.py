"""The README's main tables and claims, computed from the archived batch records (never typed in).

``python -m castlib.repro.results_md [--archive papermill_runs/results] [--readme README.md]``
rewrites two blocks of ``README.md``:

* between `BEGIN` and `END`, for every archived config that is not superseded and every model it
  ran, the main tables of notebooks 02 and 03 (`castlib.repro.main_table.main_table`: per
  target, zero-shot, CAST and the best label-free baseline with 95% paired-bootstrap intervals
  over test rows and most-predicted-label shares, collapse marked; CAST's paired differences
  with the two-level bootstrap interval over seeds and rows, the exact McNemar p stratified by
  seed and the verdict, where the records keep per-example predictions; mean +- std over seeds
  otherwise), how many of the config's runs the table rests on, and one computed line per
  comparison counting the resolved targets either way;
* between `CLAIMS_BEGIN` and `CLAIMS_END`, one row per claim of the paper
  (`castlib.repro.claims.CLAIMS`), config and model with archived runs of the claim's notebook:
  its model, test rows n, seeds, short verdict and the first sentence of its verdict paragraph
  (`castlib.repro.claims.claim_verdict`). A README without these markers gets the block
  inserted after `END`, under a heading (and the command says so).

``--check`` writes nothing and exits 1 when either block differs from the archive's (the test
suite runs the same comparison). Nothing here loads a model.
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

__all__ = [
    "BEGIN",
    "CLAIMS_BEGIN",
    "CLAIMS_END",
    "END",
    "claims_markdown",
    "main_tables_markdown",
    "replace_block",
]

BEGIN = "<!-- main-tables:begin (python -m castlib.repro.results_md; do not edit by hand) -->"
END = "<!-- main-tables:end -->"
CLAIMS_BEGIN = "<!-- claims:begin (python -m castlib.repro.results_md; do not edit by hand) -->"
CLAIMS_END = "<!-- claims:end -->"
CLAIMS_HEADING = "### The paper's claims, judged from the archive"
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
    resolved = part["resolved"].astype(bool)
    better = part.loc[resolved & (part["diff"] > 0), "target"].tolist()
    worse = part.loc[resolved & (part["diff"] < 0), "target"].tolist()
    ns = sorted({int(n) for n in part["n"].dropna()})
    rest = len(part) - len(better) - len(worse)

    def names(xs: list[str]) -> str:
        return f" ({', '.join(xs)})" if xs else ""

    return (
        f"- CAST against {versus}: better on {len(better)}{names(better)}, worse on "
        f"{len(worse)}{names(worse)}, not resolved on {rest} of {len(part)} target(s) "
        f"(resolved: the 95% two-level bootstrap interval over seeds and rows excludes zero and "
        f"the exact McNemar test stratified by seed gives p < 0.05; n = "
        f"{', '.join(map(str, ns))} rows)."
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


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with everything between the ``begin`` and ``end`` lines replaced by ``block``."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the README has no {begin!r} ... {end!r} block")
    return text[: start + len(begin)] + "\n\n" + block.strip() + "\n\n" + text[stop:]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _first_sentence(paragraph: str) -> str:
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def claims_markdown(
    archive: str | Path = "papermill_runs/results",
    root: str | Path | None = None,
    n_boot: int = N_BOOT,
) -> str:
    """The claims block's content (without the markers): see the module docstring."""
    archive = Path(archive)
    if not archive.is_dir():
        raise FileNotFoundError(f"archive folder not found: {archive}")
    root = Path(root) if root is not None else archive.resolve().parents[1]
    rows, evaluated = [], set()
    for folder in archive_configs(archive):
        cfg = load_archive(folder, root)
        s = cfg.summary
        if cfg.superseded is not None or "notebook" not in s:
            continue
        stems = s["notebook"].map(C.notebook_stem)
        for claim in C.CLAIMS:
            part = s[stems == claim.notebook]
            models = part.groupby("model", sort=True) if "model" in part else [("?", part)]
            for model, model_rows in models:
                if model_rows.empty:
                    continue
                v = C.claim_verdict(claim, model_rows, cfg.predictions, n_boot=n_boot)
                evaluated.add(claim.notebook)
                rows.append(
                    {
                        "claim": _cell(f'{claim.title}: "{claim.quote}"'),
                        "notebook": claim.notebook,
                        "config": f"`{cfg.name}`",
                        "model": str(model),
                        "n": v.n,
                        "seeds": v.seeds,
                        "verdict": v.verdict,
                        "basis": _cell(_first_sentence(v.paragraph)),
                    }
                )
    if not rows:
        return "No archived run of a claim's notebook yet."
    text = pd.DataFrame(rows).to_markdown(index=False)
    missing = [c.notebook for c in C.CLAIMS if c.notebook not in evaluated]
    if missing:
        text += f"\n\nNo archived run (not evaluated): {', '.join(missing)}."
    return text


def _with_claims_block(text: str) -> str:
    """``text`` with an empty claims block after `END` when it has no claims markers."""
    if CLAIMS_BEGIN in text:
        return text
    end = text.find(END)
    if end < 0:
        raise ValueError(f"the README has no {END!r} line to put the claims block after")
    at = end + len(END)
    block = f"\n\n{CLAIMS_HEADING}\n\n{CLAIMS_BEGIN}\n{CLAIMS_END}"
    return text[:at] + block + text[at:]


def rewrite(text: str, archive: Path, n_boot: int = N_BOOT) -> str:
    """``text`` (a README) with both blocks rewritten from ``archive``."""
    new = replace_block(text, main_tables_markdown(archive, n_boot=n_boot))
    claims = claims_markdown(archive, n_boot=n_boot)
    return replace_block(_with_claims_block(new), claims, CLAIMS_BEGIN, CLAIMS_END)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m castlib.repro.results_md",
        description="Rewrite the README's main tables and claims from the archived records.",
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
        new = rewrite(text, args.archive, n_boot=args.n_boot)
    except ValueError as exc:
        parser.error(str(exc))
    if args.check:
        if new != text:
            print(
                f"{args.readme}: main tables or claims differ from the archive; run "
                "python -m castlib.repro.results_md"
            )
            return 1
        print(f"{args.readme}: main tables and claims match the archive")
        return 0
    inserted = CLAIMS_BEGIN not in text
    args.readme.write_text(new, encoding="utf-8")
    where = f" (claims block inserted after {END})" if inserted else ""
    print(f"{args.readme}: main tables and claims rewritten{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
