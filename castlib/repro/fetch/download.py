"""Downloading tasks: reading the hub (the only functions that touch the network; tests replace
them), the deterministic selection of rows, writing a task folder, and ``castlib data fetch``.

* Subsampling is deterministic: each hub split is visited in a ``random.Random(seed)`` shuffled
  order and rows are taken until the cap is reached; the kept rows are written in their original
  hub order.  When two of our splits come from one hub split (e.g. financial_phrasebank has a
  single split), test is filled first, then dev, then train, so they are disjoint.
* Rows whose conversion fails, whose label is outside the label space, that a task filters on
  purpose (e.g. ARC items without 4 options) or that repeat an already kept input are skipped and
  counted in ``meta.notes``; nothing is silently rewritten.
* ``meta.json`` is written last, atomically (tmp file + rename): a folder without ``meta.json`` is
  a partial fetch.

CLI::

    castlib data fetch [TASK ...] --data-dir DIR [--max-train N] [--max-test N] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...hub import HubUnreachableError, unreachable_reason
from .registry import DEFAULT_TASKS, known_tasks, resolve_task
from .spec import (
    INSTALL_HINT,
    MAX_FILE_BYTES,
    PARQUET_REVISION,
    SPLIT_ORDER,
    LabelError,
    Row,
    SkipRow,
    TaskSpec,
    validate_row,
)

__all__ = ["build_meta", "fetch_task", "fetch_tasks", "main", "select_rows"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Hub access (the only functions that touch the network; tests replace them)
# --------------------------------------------------------------------------------------------


def _hub_config(spec: TaskSpec, revision: str | None) -> str | None:
    """The config name as the given revision lays it out (a folder on the Parquet export)."""
    if revision == PARQUET_REVISION:
        return spec.config or "default"
    return spec.config


def _load_split(
    spec: TaskSpec, split: str, revision: str | None = None, parquet_export: bool = False
) -> Sequence[Mapping[str, Any]]:
    """Load one hub split as a random-access sequence of row dicts (a ``datasets.Dataset``).

    ``revision`` pins a commit.  ``parquet_export=True`` reads the hub's Parquet export branch,
    where each config is a folder (``<config>/<split>/*.parquet``), so the config is passed as
    ``data_dir`` rather than as a builder name.
    """
    try:
        import datasets  # noqa: PLC0415 - optional extra, imported lazily
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    if parquet_export:
        ds = datasets.load_dataset(
            spec.hub_id, data_dir=spec.config or "default", split=split, revision=revision
        )
    else:
        ds = datasets.load_dataset(spec.hub_id, spec.config, split=split, revision=revision)
    return ds  # type: ignore[no-any-return]


def _resolve_commit(hub_id: str, revision: str | None) -> str | None:
    """The commit sha a revision of a hub dataset points to (None if it cannot be resolved)."""
    try:
        from huggingface_hub import HfApi  # noqa: PLC0415 - installed with datasets
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    try:
        info = HfApi().dataset_info(hub_id, revision=revision)
    except Exception as exc:  # noqa: BLE001 - network/auth errors: record 'unknown'
        log.warning("could not resolve the commit of %s@%s: %s", hub_id, revision or "main", exc)
        return None
    return getattr(info, "sha", None)


def _is_script_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "script" in text or "trust_remote_code" in text


def _load_all(
    spec: TaskSpec,
) -> tuple[dict[str, Sequence[Mapping[str, Any]]], str | None, str]:
    """Load every hub split the spec uses, pinned to one commit.

    Returns ``(rows by hub split, commit sha or None, revision used)``.  A script-based hub
    dataset (which ``datasets>=4`` refuses to run) is retried from its Parquet export branch.
    """
    revisions = [spec.revision or "main"]
    if PARQUET_REVISION not in revisions:
        revisions.append(PARQUET_REVISION)
    last_exc: Exception | None = None
    for revision in revisions:
        commit = _resolve_commit(spec.hub_id, revision)
        pin = commit or (None if revision == "main" else revision)
        try:
            loaded: dict[str, Sequence[Mapping[str, Any]]] = {}
            for hub_split in dict.fromkeys(spec.splits.values()):
                loaded[hub_split] = _load_split(
                    spec, hub_split, revision=pin, parquet_export=revision == PARQUET_REVISION
                )
            return loaded, commit, revision
        except ImportError:
            raise
        except Exception as exc:
            last_exc = exc
            if revision == PARQUET_REVISION or not _is_script_error(exc):
                raise
            log.info("%s: %s; retrying from %s", spec.hub_id, exc, PARQUET_REVISION)
    assert last_exc is not None  # pragma: no cover
    raise last_exc  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@dataclass
class SplitStats:
    """What happened to one of our splits during a fetch (reported in ``meta.notes``)."""

    hub_split: str
    hub_rows: int
    cap: int
    examined: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    trimmed_for_size: int = 0


def _sort_token(value: Any) -> tuple[int, Any]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (0, value)
    text = str(value).strip()
    return (0, int(text)) if text.isdigit() else (1, text)


def _input_key(row: Mapping[str, Any], spec: TaskSpec) -> str:
    parts: list[Any] = [row.get(f) for f in spec.fields]
    if spec.kind == "multiple_choice":
        parts.append(row.get("options"))
    return json.dumps(parts, ensure_ascii=False)


def _shuffled_order(
    data: Sequence[Mapping[str, Any]], seed: int, order_key: str | None
) -> list[int]:
    indices = list(range(len(data)))
    if order_key is not None:
        indices.sort(key=lambda i: _sort_token(data[i].get(order_key, "")))
    random.Random(seed).shuffle(indices)
    return indices


def _jsonl_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def select_rows(
    spec: TaskSpec,
    loaded: Mapping[str, Sequence[Mapping[str, Any]]],
    caps: Mapping[str, int],
    seed: int = 0,
) -> tuple[dict[str, list[Row]], dict[str, SplitStats]]:
    """Convert, validate, de-duplicate and subsample rows for every split of ``spec``.

    Deterministic for a given ``seed``.  Pure apart from reading ``loaded``.
    """
    meta = spec.meta_core()
    orders = {hs: _shuffled_order(data, seed, spec.order_key) for hs, data in loaded.items()}
    cursors = dict.fromkeys(loaded, 0)
    seen_inputs: set[str] = set()
    seen_ids: set[str] = set()
    out: dict[str, list[Row]] = {}
    stats: dict[str, SplitStats] = {}
    for split in SPLIT_ORDER:
        if split not in spec.splits:
            continue
        hub_split = spec.splits[split]
        data = loaded[hub_split]
        order = orders[hub_split]
        st = SplitStats(hub_split=hub_split, hub_rows=len(data), cap=caps[split])
        picked: list[tuple[int, Row, str]] = []
        size = 0
        while len(picked) < st.cap and cursors[hub_split] < len(order):
            index = order[cursors[hub_split]]
            cursors[hub_split] += 1
            st.examined += 1
            try:
                row = spec.convert_row(dict(data[index]))
            except SkipRow as exc:
                st.skipped[f"filtered: {exc}"] += 1
                continue
            except LabelError:
                st.skipped["label outside the label space"] += 1
                continue
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                st.skipped["conversion failed"] += 1
                continue
            row_id = str(row.pop("id", "") or "").strip() or f"{spec.name}-{hub_split}-{index}"
            if row_id in seen_ids:
                row_id = f"{row_id}-{hub_split}-{index}"
            row = {"id": row_id, **row}
            try:
                validate_row(row, meta)
            except LabelError:
                st.skipped["label outside the label space"] += 1
                continue
            except ValueError:
                st.skipped["invalid row"] += 1
                continue
            key = _input_key(row, spec)
            if key in seen_inputs:
                st.skipped["duplicate input"] += 1
                continue
            line_bytes = len(_jsonl_line(row).encode("utf-8"))
            if size + line_bytes >= MAX_FILE_BYTES:
                st.trimmed_for_size += 1
                break
            size += line_bytes
            seen_inputs.add(key)
            seen_ids.add(row_id)
            picked.append((index, row, key))
        picked.sort(key=lambda item: item[0])
        out[split] = [row for _, row, _ in picked]
        st.kept = len(picked)
        stats[split] = st
    return out, stats


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split_note(split: str, st: SplitStats, seed: int) -> str:
    if st.kept >= st.hub_rows and not st.skipped:
        how = f"all {st.kept} rows of hub split '{st.hub_split}'"
    else:
        how = (
            f"seed-{seed} sample of {st.kept} (cap {st.cap}) from hub split '{st.hub_split}' "
            f"({st.hub_rows} rows, {st.examined} examined in shuffled order)"
        )
    text = f"{split} = {how}"
    if st.skipped:
        details = ", ".join(f"{n} {reason}" for reason, n in sorted(st.skipped.items()))
        text += f"; skipped {sum(st.skipped.values())} ({details})"
    else:
        text += "; skipped 0"
    if st.trimmed_for_size:
        text += f"; stopped early to keep the file under {MAX_FILE_BYTES // (1024 * 1024)} MiB"
    return text


def build_meta(
    spec: TaskSpec,
    counts: Mapping[str, int],
    stats: Mapping[str, SplitStats],
    *,
    commit: str | None,
    revision: str,
    seed: int,
) -> dict[str, Any]:
    """The ``meta.json`` content for a fetched task (FORMAT.md keys, the shipped data/ key order)."""
    config = _hub_config(spec, revision)
    paths = [f"{config or 'default'}/{hs}" for hs in dict.fromkeys(spec.splits.values())]
    split_notes = "; ".join(_split_note(s, stats[s], seed) for s in SPLIT_ORDER if s in stats)
    notes = (
        f"Fetched by castlib.repro.fetch from the Hugging Face hub dataset {spec.hub_id}"
        f" (config {config or 'default'}, revision {revision}, commit {commit or 'unknown'}). "
        f"{split_notes}. Splits are filled test, dev, train; a row is kept only once "
        "(duplicate inputs skipped), kept rows are in hub order."
    )
    if spec.notes:
        notes += " " + spec.notes
    meta: dict[str, Any] = spec.meta_core()
    meta["source"] = {
        "repo": spec.hub_id,
        "commit": commit or "unknown",
        "paths": paths,
        "url": spec.url or f"https://huggingface.co/datasets/{spec.hub_id}",
    }
    meta["license"] = spec.license
    meta["citation"] = spec.citation
    meta["counts"] = {s: int(counts.get(s, 0)) for s in ("train", "test", "dev")}
    meta["notes"] = notes
    if spec.field_roles:
        meta["field_roles"] = dict(spec.field_roles)
    meta["role"] = spec.role
    meta.update(spec.extra_meta)
    return meta


def _caps(spec: TaskSpec, max_train: int, max_test: int) -> dict[str, int]:
    def cap(limit: int, task_cap: int | None) -> int:
        return limit if task_cap is None else min(limit, task_cap)

    return {
        "train": cap(max_train, spec.train_cap),
        "test": cap(max_test, spec.test_cap),
        "dev": max_test,
    }


def fetch_task(
    spec: TaskSpec,
    data_dir: str | Path,
    max_train: int = 2000,
    max_test: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Fetch one task into ``<data_dir>/<spec.name>``; returns the folder."""
    if max_train < 0 or max_test < 0:
        raise ValueError("max_train and max_test must be >= 0")
    out_dir = Path(data_dir) / spec.name
    meta_path = out_dir / "meta.json"
    if meta_path.exists() and not overwrite:
        log.info("%s: %s exists, skipping (use overwrite=True to refetch)", spec.name, meta_path)
        return out_dir
    reason = unreachable_reason()
    if reason is not None:
        raise HubUnreachableError(
            f"cannot fetch {spec.name} ({spec.hub_id}): the Hugging Face hub is unreachable: "
            f"{reason}"
        )
    log.info("%s: loading %s (%s)", spec.name, spec.hub_id, spec.config or "default")
    loaded, commit, revision = _load_all(spec)
    rows, stats = select_rows(spec, loaded, _caps(spec, max_train, max_test), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # from here on, the folder reads as partial until done
    for split in ("train", "test", "dev"):
        path = out_dir / f"{split}.jsonl"
        (out_dir / f"{split}.jsonl.gz").unlink(missing_ok=True)  # a shipped copy is replaced
        if split in rows:
            _atomic_write(path, "".join(_jsonl_line(r) for r in rows[split]))
        else:
            path.unlink(missing_ok=True)
    counts = {split: len(r) for split, r in rows.items()}
    meta = build_meta(spec, counts, stats, commit=commit, revision=revision, seed=seed)
    _atomic_write(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("%s: wrote %s (%s)", spec.name, out_dir, counts)
    return out_dir


def fetch_tasks(
    names: list[str] | None,
    data_dir: str | Path,
    max_train: int = 2000,
    max_test: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Download tasks from the Hugging Face hub and write them in castlib's task format.

    ``names=None`` fetches :data:`DEFAULT_TASKS`.  Every name is resolved before anything is
    downloaded, so an unknown name raises ``ValueError`` (listing the known ones) up front.
    Existing complete folders (with ``meta.json``) are kept unless ``overwrite``.
    Needs ``pip install 'castlib[fetch]'``.  Returns the task folders, in ``names`` order.
    """
    specs = [resolve_task(n) for n in (DEFAULT_TASKS if names is None else names)]
    return [
        fetch_task(
            s, data_dir, max_train=max_train, max_test=max_test, seed=seed, overwrite=overwrite
        )
        for s in specs
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castlib data fetch",
        description=(
            "Download tasks from the Hugging Face hub into castlib's task format "
            "(needs: pip install 'castlib[fetch]')."
        ),
    )
    parser.add_argument(
        "tasks",
        nargs="*",
        metavar="TASK",
        help="task names (default: the spec/paper tasks and SIB-200 languages); "
        "families take a language: sib200_<lang>, nusax_senti_<lang>",
    )
    parser.add_argument("--data-dir", type=Path, help="folder to write <task>/ folders into")
    parser.add_argument("--max-train", type=int, default=2000, help="train cap (default 2000)")
    parser.add_argument("--max-test", type=int, default=1000, help="test/dev cap (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="refetch existing tasks")
    parser.add_argument("--list", action="store_true", help="list task names and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``castlib data fetch`` entry point; returns a process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in known_tasks():
            print(name)
        return 0
    if args.data_dir is None:
        parser.error("--data-dir is required")
    if args.max_train < 0 or args.max_test < 0:
        parser.error("--max-train and --max-test must be >= 0")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.tasks or list(DEFAULT_TASKS)
    try:
        specs = [resolve_task(n) for n in names]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pending = [
        s for s in specs if args.overwrite or not (args.data_dir / s.name / "meta.json").exists()
    ]
    reason = unreachable_reason() if pending else None
    if reason is not None:
        print(
            f"error: the Hugging Face hub is unreachable ({reason}); cannot fetch "
            f"{', '.join(s.name for s in pending)}",
            file=sys.stderr,
        )
        return 1
    failed: list[str] = []
    for spec in specs:
        try:
            path = fetch_task(
                spec,
                args.data_dir,
                max_train=args.max_train,
                max_test=args.max_test,
                seed=args.seed,
                overwrite=args.overwrite,
            )
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - report and go on with the other tasks
            print(f"error: {spec.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(spec.name)
            continue
        print(path)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
