"""The ``castlib`` command line: one verb per job, each documented in ``castlib VERB --help``.

::

    castlib data fetch [TASK ...] --data-dir DIR   download tasks from the Hugging Face hub
    castlib data list [--data-dir DIR]             list the tasks in a data directory
    castlib quickstart [...]                       the README's main job (castlib.quickstart)
    castlib run CONFIG.yaml [...]                  a papermill batch (castlib.repro.runs)
    castlib archive OUTPUT_DIR DEST [...]          archive a batch's finished runs (castlib.repro.archive)
    castlib report [...]                           the static HTML report (castlib.repro.report)
    castlib tables [...]                           the README's result tables (castlib.repro.results_md)
    castlib docs [...]                             the documentation site (mkdocs build)

Each verb hands the rest of the command line to its module's ``main(argv)``, so
``python -m castlib.repro.runs`` (and the other ``python -m`` forms) is the same command. This
module is the top floor: the only one outside `castlib.repro` that imports it (lazily, per verb).
The benchmark suite is research infrastructure, not part of the package: run
``python -m benchmarks.bench --json PATH`` from the repository root.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["VERBS", "main"]

Main = Callable[[Sequence[str]], int]


def _module_main(module: str) -> Main:
    """The ``main(argv)`` of ``module``, imported when the verb runs."""

    def run(argv: Sequence[str]) -> int:
        return int(importlib.import_module(module).main(list(argv)))

    return run


def _data_main(argv: Sequence[str]) -> int:
    """``castlib data fetch|list``."""
    parser = argparse.ArgumentParser(prog="castlib data", description="Task data: fetch or list.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "fetch",
        add_help=False,
        help="download tasks from the Hugging Face hub (castlib data fetch --help)",
    )
    listing = sub.add_parser("list", help="list the tasks in a data directory")
    listing.add_argument(
        "--data-dir", default=None, help="default: $CASTLIB_DATA, else the shipped data/ folder"
    )
    args, rest = parser.parse_known_args(list(argv))
    if args.action == "fetch":
        return _module_main("castlib.repro.fetch")(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .tasks import list_tasks

    print("\n".join(list_tasks(args.data_dir)))
    return 0


def _docs_main(argv: Sequence[str]) -> int:
    """``castlib docs [MKDOCS BUILD OPTIONS]``: ``mkdocs build`` in the current folder."""
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: castlib docs [MKDOCS BUILD OPTIONS]\n\nBuild the documentation site with "
            "`mkdocs build --strict` from the repository root (where mkdocs.yml is); further "
            "options go to mkdocs build."
        )
        return 0
    if not Path("mkdocs.yml").is_file():
        print(
            f"error: no mkdocs.yml in {Path.cwd()}: run `castlib docs` from the repository root "
            "(the documentation site is built from a checkout, not from an installed package)",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", *argv]
    return subprocess.run(command, env=env, check=False).returncode


#: verb -> (one-line summary for ``castlib --help``, its main(argv)).
VERBS: dict[str, tuple[str, Main]] = {
    "data": ("fetch tasks from the Hugging Face hub, or list the local ones", _data_main),
    "quickstart": (
        "the README's main job: steer SST-2 zero-shot",
        _module_main("castlib.quickstart"),
    ),
    "run": (
        "run parameterised notebooks over a grid (papermill) and aggregate",
        _module_main("castlib.repro.runs.cli"),
    ),
    "archive": (
        "archive a batch's finished runs into papermill_runs/results/",
        _module_main("castlib.repro.archive"),
    ),
    "report": (
        "where the archived runs' time went: wall time per notebook, seconds per method (no model)",
        _module_main("castlib.repro.costs"),
    ),
    "tables": (
        "the README's result tables from the archived records",
        _module_main("castlib.repro.results_md"),
    ),
    "docs": ("build the documentation site (mkdocs build; needs mkdocs.yml)", _docs_main),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castlib",
        description="castlib: Cross-task Activation Steering Transfer. "
        "`castlib VERB --help` documents each verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (summary, _) in VERBS.items():
        # no options of its own: everything after the verb (--help included) goes to its main
        sub.add_parser(verb, help=summary, description=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the verb and hand the rest of ``argv`` to its main; returns the exit status."""
    args, rest = _parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return VERBS[args.verb][1](rest)


if __name__ == "__main__":
    raise SystemExit(main())
