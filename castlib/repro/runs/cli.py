"""The command line of batch runs: ``castlib run CONFIG.yaml [...]`` (also
``python -m castlib.repro.runs CONFIG.yaml [...]``).

It sits above both executors (sequential, `castlib.repro.runs.execute.run_batch`; Ray,
`castlib.repro.runs.ray_executor.run_batch_ray`), so imports run one way:
config <- execute <- ray_executor <- cli (and aggregate <- cli).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .aggregate import aggregate
from .config import ConfigError, load_config, runnable_config, select_runs
from .execute import is_complete, run_batch
from .layout import SUMMARY_FILE
from .ray_executor import RayConnectionError, run_batch_ray

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castlib run",
        description="Run parameterised notebooks over a grid with papermill and aggregate results.",
        epilog="Exit status: 0 all runs ok, 1 some run failed, 2 config/usage error.",
    )
    parser.add_argument("config", nargs="?", help="YAML run config")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, execute nothing")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME_SUBSTR",
        help="only runs whose id contains this substring (repeatable: any of them)",
    )
    parser.add_argument("--force", action="store_true", help="rerun runs that are already done")
    parser.add_argument(
        "--kernel", help="Jupyter kernel name (default: the config's, else the current interpreter)"
    )
    parser.add_argument(
        "--aggregate-only",
        metavar="OUTPUT_DIR",
        help="only rebuild summary.csv, runs.csv and figures/ of an output directory",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--executor",
        choices=("sequential", "ray"),
        default="sequential",
        help="sequential (default: one run after another in this process) or ray (one Ray "
        "task per run; see castlib.repro.runs.ray_executor)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="with --executor ray: the cluster to join (HOST:PORT, ray://HOST:PORT or auto); "
        "default: start a local Ray for the batch",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a run failed, 2 error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.aggregate_only:
        if args.config:
            parser.error("give either CONFIG or --aggregate-only OUTPUT_DIR, not both")
        try:
            summary = aggregate(args.aggregate_only)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(summary)} result rows -> {Path(args.aggregate_only) / SUMMARY_FILE}")
        return 0
    if not args.config:
        parser.error("a CONFIG file is required (or --aggregate-only OUTPUT_DIR)")
    if args.address and args.executor != "ray":
        parser.error("--address needs --executor ray")
    try:
        config = load_config(args.config)
        if not args.dry_run:  # a superseded config or an unwritable output_dir: exit 2
            config = runnable_config(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = select_runs(config.runs, args.only)
    if not runs:
        print(f"error: no run id contains any of {args.only}", file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            done = not args.force and is_complete(run, config.output_dir)
            params = json.dumps(run.parameters, default=str)
            print(f"{'skip' if done else 'run '}  {run.run_id}  {run.notebook_label}  {params}")
        print(f"{len(runs)} runs -> {config.output_dir}")
        return 0
    batch = dict(only=args.only, force=args.force, kernel_name=args.kernel)
    if args.executor == "ray":
        try:
            outcomes = run_batch_ray(
                config, address=args.address, progress=not args.no_progress, **batch
            )
        except (RayConnectionError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            outcomes = run_batch(config, progress=not args.no_progress, **batch)
        except ConfigError as exc:  # preflight: a unit this machine cannot run
            print(f"error: {exc}", file=sys.stderr)
            return 2
    summary = aggregate(config.output_dir)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "failed", "skipped")}
    print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"{len(summary)} result rows -> {config.output_dir / SUMMARY_FILE}"
    )
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"  failed: {outcome.run.run_id}: {outcome.error}", file=sys.stderr)
    return 1 if counts["failed"] else 0
