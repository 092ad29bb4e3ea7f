"""Each method before and after a change, on the test rows both batches scored.

Reads the per-row predictions of two batch folders (an archive folder under
``papermill_runs/results/<config>`` or a batch's ``runs_out/<config>``: every ``results.json``
below it) and prints, per (notebook, target, method, seed), the accuracy of each on the rows
both scored (matched by example id), their paired difference and its 95% paired-bootstrap
interval (`castlib.stats`), and the chosen layer and alpha where the records name them.
Cross-task ICL's per-source records are pooled as in the main tables (the per-row correctness
averaged over sources).

    python benchmarks/before_after.py papermill_runs/results/qwen_cpu runs_out/qwen_cpu_race \
        --notebook 02_cross_domain
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from castlib.stats import paired_difference


def _records(folder: Path, notebook: str) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"{notebook}/**/results.json")):
        if ".castlib-staging" in path.parts:
            continue
        recs = json.loads(path.read_text(encoding="utf-8"))
        out += recs if isinstance(recs, list) else [recs]
    return out


def _field(rec: dict, key: str):
    value = rec.get(key)
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def correctness(
    folder: Path,
    notebook: str,
    where: dict[str, object] | None = None,
    assume: dict[str, object] | None = None,
) -> dict[tuple, dict]:
    """(target, method, seed) -> {"rows": {id: [correct (0/1) per record]}, "preds": {id:
    [predicted label per record]}, "layer", "alpha"}; a method with one record per source
    (cross-task ICL) has one value per source, pooled by the paired bootstrap as the main tables
    pool them. ``where``: keep only the records whose fields have these values (e.g.
    ``{"dtype": "bfloat16"}``); ``assume``: the value a record that lacks one of those fields is
    taken to have (records made before the field existed; otherwise such a record is left out)."""
    assumed = assume or {}
    per: dict[tuple, list[dict]] = defaultdict(list)
    for rec in _records(folder, notebook):
        preds = _field(rec, "predictions")
        if not isinstance(preds, dict) or "id" not in preds or rec.get("split") != "test":
            continue
        if any(rec.get(k, assumed.get(k)) != v for k, v in (where or {}).items()):
            continue
        triples = list(zip(preds["id"], preds["pred"], preds["gold"], strict=True))
        rows = {i: float(p == g) for i, p, g in triples}
        key = (rec.get("target"), rec.get("method"), rec.get("seed"))
        per[key].append(
            {
                "rows": rows,
                "preds": {i: p for i, p, _ in triples},
                "layer": rec.get("layer"),
                "alpha": rec.get("alpha"),
            }
        )
    out = {}
    for key, recs in per.items():
        ids = set.intersection(*(set(r["rows"]) for r in recs))
        rows = {i: [r["rows"][i] for r in recs] for i in ids}  # one value per source record
        preds = {i: [r["preds"][i] for r in recs] for i in ids}
        one = recs[0] if len(recs) == 1 else {"layer": None, "alpha": None}
        out[key] = {"rows": rows, "preds": preds, "layer": one["layer"], "alpha": one["alpha"]}
    return out


def compare(before: Path, after: Path, notebook: str) -> list[dict]:
    """One dict per (target, method, seed) present in both folders."""
    old, new = correctness(before, notebook), correctness(after, notebook)
    table = []
    for key in sorted(set(old) & set(new), key=str):
        ids = sorted(set(old[key]["rows"]) & set(new[key]["rows"]))
        if not ids:
            continue
        a = np.array([new[key]["rows"][i] for i in ids]).T  # [records, rows]
        b = np.array([old[key]["rows"][i] for i in ids]).T
        diff = paired_difference(a, b, seed=0)
        table.append(
            {
                "target": key[0],
                "method": key[1],
                "seed": key[2],
                "n": len(ids),
                "before": float(b.mean()),  # pooled over a method's per-source records
                "after": float(a.mean()),
                "diff": diff.estimate,
                "ci": (diff.low, diff.high),
                "before_config": (old[key]["layer"], old[key]["alpha"]),
                "after_config": (new[key]["layer"], new[key]["alpha"]),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--notebook", default="02_cross_domain")
    args = parser.parse_args()
    rows = compare(args.before, args.after, args.notebook)
    print(
        "| target | method | seed | n | before | after | after - before [95% CI] | (layer, alpha) before -> after |"
    )
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['method']} | {r['seed']} | {r['n']} | {r['before']:.3f} | "
            f"{r['after']:.3f} | {r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
            f"{r['before_config']} -> {r['after_config']} |"
        )


if __name__ == "__main__":
    main()
