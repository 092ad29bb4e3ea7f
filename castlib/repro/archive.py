"""Archive a batch's finished runs into ``papermill_runs/results/<name>/`` (kept in git).

``castlib archive OUTPUT_DIR DEST [--root ROOT] [--max-notebook-mb MB]`` (also
``python -m castlib.repro.archive``, what ``papermill_runs/results/archive.sh`` runs) copies,
for every run under ``OUTPUT_DIR`` whose ``run.json`` says ``ok``, into ``DEST/<run id>/`` (``<notebook stem or entry name>/<grid point>/``):

* the records: ``run.json``, ``results.json`` (with the per-example predictions) and every other
  ``*.json`` and ``*.csv`` table the notebook wrote;
* its figures: every ``*.png`` the notebook saved into its output folder;
* the executed notebook ``<stem>.ipynb`` (the file papermill wrote, named in run.json's
  ``output_notebook``), with its machine paths replaced (`clean_notebook`) and, when it is
  still larger than ``max_notebook_bytes``, its image outputs dropped (the same figures are the
  PNGs kept beside it).

Machine paths: every string of run.json and of the notebook (sources, outputs, metadata) has the
repository root ``ROOT/`` removed (paths become repository-relative, as run.json's always were)
and then the home directory replaced by ``~``. Runs in ``.castlib-staging`` (forced reruns not
swapped in) and failed runs are skipped. The archive is then aggregated
(`castlib.repro.runs.aggregate`: ``summary.csv``, ``runs.csv``, ``predictions.jsonl.gz``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

from . import runs as R

__all__ = [
    "DROPPED_IMAGE_NOTE",
    "MAX_NOTEBOOK_BYTES",
    "archive_batch",
    "clean_notebook",
    "replace_paths",
]

#: An executed notebook larger than this (after path cleaning) loses its image outputs.
MAX_NOTEBOOK_BYTES = 4 * 1024 * 1024
#: What replaces a dropped image output.
DROPPED_IMAGE_NOTE = (
    "[figure dropped from the archived notebook to keep it small; the PNG figures of this run "
    "are kept beside it]"
)
_KEPT_PATTERNS = ("*.json", "*.csv", "*.png")


def _prefixes(root: Path, home: Path | None) -> list[tuple[str, str]]:
    pairs = [(f"{root.resolve().as_posix().rstrip('/')}/", ""), (root.resolve().as_posix(), ".")]
    if home is not None and home.resolve() != Path("/"):
        pairs += [(f"{home.resolve().as_posix().rstrip('/')}/", "~/")]
        pairs += [(home.resolve().as_posix(), "~")]
    return pairs


def replace_paths(value: Any, root: Path, home: Path | None = None) -> Any:
    """``value`` (JSON-like) with every string's ``root/`` prefix removed (``root`` alone
    becomes ``.``) and then ``home/`` replaced by ``~/`` (``home`` alone by ``~``), wherever
    they occur in the string; the root first, so a repository under the home directory
    becomes repository-relative."""
    pairs = _prefixes(root, home)

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            for old, new in pairs:
                v = v.replace(old, new)
            return v
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return fix(value)


def _drop_images(nb: nbformat.NotebookNode) -> int:
    dropped = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data or not any(key.startswith("image/") for key in data):
                continue
            output["data"] = nbformat.from_dict({"text/plain": DROPPED_IMAGE_NOTE})
            output.get("metadata", {}).clear()
            dropped += 1
    return dropped


def clean_notebook(
    src: str | Path,
    dest: str | Path,
    root: str | Path,
    home: str | Path | None = None,
    max_bytes: int = MAX_NOTEBOOK_BYTES,
) -> int:
    """Write executed notebook ``src`` to ``dest`` with machine paths replaced
    (`replace_paths`) and, when the result is larger than ``max_bytes``, its image outputs
    replaced by `DROPPED_IMAGE_NOTE`. Returns the number of image outputs dropped."""
    raw = json.loads(Path(src).read_text(encoding="utf-8"))
    nb = nbformat.from_dict(replace_paths(raw, Path(root), Path(home) if home else None))
    dropped = 0
    text = nbformat.writes(nb)
    if len(text.encode("utf-8")) > max_bytes:
        dropped = _drop_images(nb)
        text = nbformat.writes(nb)
    Path(dest).write_text(text, encoding="utf-8")
    return dropped


def _ok_runs(src: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(src.rglob(R.RUN_FILE)):
        if R.STAGING_DIR in path.relative_to(src).parts:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("status") == "ok":
            out.append((path.parent, record))
    return out


def archive_batch(
    src: str | Path,
    dest: str | Path,
    root: str | Path,
    home: str | Path | None = None,
    max_notebook_bytes: int = MAX_NOTEBOOK_BYTES,
    aggregate: bool = True,
) -> list[str]:
    """Copy the finished runs of batch output folder ``src`` into archive folder ``dest`` (see
    the module docstring) and aggregate it; returns the archived run ids."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"batch output folder not found: {src}")
    home = Path(home) if home is not None else Path.home()
    archived = []
    for run_dir, record in _ok_runs(src):
        rel = run_dir.relative_to(src)
        target = dest / rel
        if target.exists():
            shutil.rmtree(target)  # a rerun replaces the archived run as a whole
        target.mkdir(parents=True)
        for pattern in _KEPT_PATTERNS:
            for file in sorted(run_dir.glob(pattern)):
                if file.is_file() and file.name != R.RUN_FILE:
                    shutil.copy2(file, target / file.name)
        clean = replace_paths(record, Path(root), home)
        (target / R.RUN_FILE).write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
        notebook = run_dir / str(record.get("output_notebook") or "")
        if record.get("output_notebook") and notebook.is_file():
            clean_notebook(notebook, target / notebook.name, root, home, max_notebook_bytes)
        archived.append(rel.as_posix())
    if aggregate and archived:
        R.aggregate(dest)
    return archived


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``castlib archive OUTPUT_DIR DEST [--root R] [--max-notebook-mb MB]``."""
    parser = argparse.ArgumentParser(prog="castlib archive", description=__doc__)
    parser.add_argument("output_dir", type=Path, help="a batch's output folder (runs_out/...)")
    parser.add_argument("dest", type=Path, help="the archive folder (papermill_runs/results/NAME)")
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="repository root (default: cwd)"
    )
    parser.add_argument(
        "--max-notebook-mb",
        type=float,
        default=MAX_NOTEBOOK_BYTES / 2**20,
        help="drop image outputs of executed notebooks larger than this (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        ids = archive_batch(
            args.output_dir,
            args.dest,
            args.root,
            max_notebook_bytes=int(args.max_notebook_mb * 2**20),
        )
    except FileNotFoundError as exc:
        parser.error(str(exc))
    for run_id in ids:
        print(f"archived {run_id}")
    if not ids:
        print(f"no finished run under {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
