"""Issue 3's report: every method on four targets with three source tasks, seed 0.

    python scripts/methods_table.py --limit 200 --out runs_out/methods_table.jsonl

Appends one JSON record per (method, target) to --out as soon as it is measured (rerunning
skips what is there) and prints a Markdown table at the end. Hyper-parameters are chosen by each
method's own protocol (never on the test split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import castlib
import castlib.methods as methods

TARGETS = ["financial_phrasebank", "arc_challenge", "social_iqa", "medmcqa"]
SOURCES = ["sst2", "arc_easy", "commonsense_qa"]
METHODS = [
    ("zero_shot", {}),
    ("few_shot", {"k": 4}),
    ("cross_task_icl_random", {"k": 4, "demo_choice": "random"}),
    ("cross_task_icl_similar", {"k": 4, "demo_choice": "similar", "n_candidates": 128}),
    ("task_vector", {"k": 4, "n_prompts": 16, "n_tune": 24}),
    ("icv", {"k": 4, "n_samples": 32, "n_tune": 24}),
    ("cast", {"m": 32, "k": 4, "n_candidates": 128, "n_queries": 64, "n_tune": 24}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--out", default="runs_out/methods_table.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["label"], r["target"]))
    lm = castlib.load_model()
    for target in TARGETS:
        for label, params in METHODS:
            if (label, target) in done:
                continue
            name = "cross_task_icl" if label.startswith("cross_task_icl") else label
            method = methods.get(name)(**params)
            method.fit(lm, SOURCES, target, seed=args.seed)
            rec = method.evaluate(lm, target, limit=args.limit)
            rec["label"] = label
            rec.pop("tuning_grid", None)
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(label, target, round(rec["accuracy"], 3), flush=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    df = pd.DataFrame(rows)
    acc = df.pivot(index="label", columns="target", values="accuracy").round(3)
    secs = (df.assign(s=df.fit_seconds + df.eval_seconds)).pivot(
        index="label", columns="target", values="s"
    ).round(0)
    print(acc.to_string())
    print(secs.to_string())


if __name__ == "__main__":
    main()
