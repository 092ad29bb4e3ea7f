"""Is bfloat16 good enough for what the claims rest on? CAST minus each baseline, in both dtypes.

Reads a batch folder whose records ran the same units in float32 and in bfloat16 (the notebooks'
``dtype`` parameter; every record names its ``dtype``), e.g. ``papermill_runs/dtype_check.yaml``,
or a bfloat16 batch with ``--reference`` naming the folder of its float32 twin (records made
before records named their dtype count only with ``--undated float32``).
For each (target, seed) and each baseline B, on the test rows both dtypes scored (matched by
example id):

* the float32 difference acc(CAST) - acc(B) with its 95% paired-bootstrap interval
  (`castlib.stats.paired_difference`, cross-task ICL's per-source records pooled as in the main
  tables);
* the same difference computed from the bfloat16 records, and whether it falls inside the
  float32 interval (issue 43's criterion for computing in bfloat16);
* the share of rows whose prediction is the same in both dtypes, per method.

The check can fail: a bfloat16 difference outside its float32 interval is printed as ``no`` and
the script exits with 1.

    python -m benchmarks.dtype_check runs_out/dtype_check [--notebook 02_cross_domain]
    python -m benchmarks.dtype_check runs_out/dtype_check_qwen \
        --reference papermill_runs/results/qwen_cpu_race --undated float32
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.before_after import correctness
from castlib.stats import paired_difference

REFERENCE, CANDIDATE = "float32", "bfloat16"


@dataclass(frozen=True)
class Check:
    """One CAST-minus-baseline difference in both dtypes."""

    target: str
    seed: int
    baseline: str
    n: int
    reference: float  # float32 difference
    low: float  # its 95% interval
    high: float
    candidate: float  # bfloat16 difference, same rows

    @property
    def inside(self) -> bool:
        return self.low <= self.candidate <= self.high


def _matrix(entry: dict, ids: list) -> np.ndarray:
    return np.array([entry["rows"][i] for i in ids]).T  # [records, rows]


def _sides(
    folder: Path, notebook: str, reference: Path | None, undated: str | None
) -> tuple[dict, dict]:
    """The float32 and the bfloat16 correctness (`before_after.correctness`); the float32 side
    from ``reference`` when given, its records without a ``dtype`` taken as ``undated``."""
    assume = {"dtype": undated} if undated else None
    ref = correctness(reference or folder, notebook, where={"dtype": REFERENCE}, assume=assume)
    cand = correctness(folder, notebook, where={"dtype": CANDIDATE})
    return ref, cand


def checks(
    folder: Path,
    notebook: str = "02_cross_domain",
    method: str = "cast",
    reference: Path | None = None,
    undated: str | None = None,
) -> list[Check]:
    """Every (target, seed, baseline) that both dtypes ran, with ``method`` among them; the
    float32 records from ``reference`` when given (else ``folder``), and records there without
    a ``dtype`` field taken to have run in ``undated`` (None: left out)."""
    ref, cand = _sides(folder, notebook, reference, undated)
    out = []
    for target, name, seed in sorted(set(ref) & set(cand), key=str):
        if (
            name == method
            or (target, method, seed) not in ref
            or (target, method, seed) not in cand
        ):
            continue
        keys = [(target, method, seed), (target, name, seed)]
        ids = sorted(set.intersection(*(set(d[k]["rows"]) for d in (ref, cand) for k in keys)))
        if not ids:
            continue
        a, b = (_matrix(ref[k], ids) for k in keys)
        diff = paired_difference(a, b, seed=0)
        ca, cb = (_matrix(cand[k], ids) for k in keys)
        out.append(
            Check(
                target=target,
                seed=seed,
                baseline=name,
                n=len(ids),
                reference=diff.estimate,
                low=diff.low,
                high=diff.high,
                candidate=float(ca.mean() - cb.mean()),
            )
        )
    return out


def agreement(
    folder: Path,
    notebook: str = "02_cross_domain",
    reference: Path | None = None,
    undated: str | None = None,
) -> dict[tuple, tuple[int, int]]:
    """(target, method, seed) -> (rows predicted alike in both dtypes, rows both scored)."""
    ref, cand = _sides(folder, notebook, reference, undated)
    out = {}
    for key in sorted(set(ref) & set(cand), key=str):
        ids = set(ref[key]["preds"]) & set(cand[key]["preds"])
        same = sum(ref[key]["preds"][i] == cand[key]["preds"][i] for i in ids)
        out[key] = (same, len(ids))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--notebook", default="02_cross_domain")
    parser.add_argument("--method", default="cast")
    parser.add_argument(
        "--reference", type=Path, help="the float32 records' folder (default: FOLDER itself)"
    )
    parser.add_argument(
        "--undated",
        choices=(REFERENCE,),
        help="take reference records without a dtype field (made before records named it) "
        "as float32: true of this project's CPU runs, which all used dtype auto",
    )
    args = parser.parse_args(argv)
    rows = checks(args.folder, args.notebook, args.method, args.reference, args.undated)
    if not rows:
        print(f"no (target, seed) ran {args.method} in both {REFERENCE} and {CANDIDATE}")
        return 2
    print(
        f"| target | seed | baseline | n | {args.method} - baseline, {REFERENCE} [95% CI] | "
        f"{CANDIDATE} | inside |"
    )
    print("|---|---|---|---:|---|---:|---|")
    for r in rows:
        print(
            f"| {r.target} | {r.seed} | {r.baseline} | {r.n} | {r.reference:+.3f} "
            f"[{r.low:+.3f}, {r.high:+.3f}] | {r.candidate:+.3f} | {'yes' if r.inside else 'no'} |"
        )
    inside = sum(r.inside for r in rows)
    print(f"\n{inside} of {len(rows)} {CANDIDATE} differences inside their {REFERENCE} interval")
    print("\n| target | method | seed | same prediction in both dtypes |\n|---|---|---|---:|")
    for (target, name, seed), (same, n) in agreement(
        args.folder, args.notebook, args.reference, args.undated
    ).items():
        print(f"| {target} | {name} | {seed} | {same}/{n} ({same / n:.3f}) |")
    return 0 if inside == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
