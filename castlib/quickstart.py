"""The README's main job: steer SST-2 zero-shot with an in-task ICL-enhancement vector.

    v_l = mean_s [ h_l(Pk(s; D_s)) - h_l(P0(s)) ]      over n training examples s

(D_s: k other training examples). The layer l* and the scale alpha are chosen on SST-2's dev
split (never on the test split); then zero-shot accuracy on the test split is printed before and
after adding ``alpha * v_{l*}`` at the last prompt token of block l*.

    python -m castlib.quickstart [--n-test 200] [--n-train 32] [--k 4] [--dev 64]
    make quickstart QUICKSTART_ARGS="--n-test 16 --dev 16"
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence

from .models import EMBEDDED_MODEL, load_model
from .prompts import k_shot, zero_shot
from .record import record_activations
from .scoring import evaluate
from .steer import steer
from .tasks import load_task
from .vectors import SteeringVector


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="castlib quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=EMBEDDED_MODEL)
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n-train", type=int, default=32, help="examples the vector is averaged over")
    p.add_argument("--k", type=int, default=4, help="demonstrations per few-shot prompt")
    p.add_argument("--dev", type=int, default=64, help="dev examples for choosing layer/alpha")
    p.add_argument(
        "--n-test", type=int, default=200, help="test examples (a seeded sample, the same twice)"
    )
    p.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: L/4, L/2, 3L/4")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    task = load_task(args.task, args.data_dir)
    print(f"model: {lm}\ntask: {task}")
    rng = random.Random(args.seed)
    pool = list(task.train)
    chosen = rng.sample(pool, args.n_train)
    fewshot, zeroshot = [], []
    for s in chosen:
        demos = rng.sample([x for x in chosen if x.id != s.id], args.k)
        fewshot.append(k_shot(task, s, demos))
        zeroshot.append(zero_shot(task, s))
    acts_k = record_activations(lm, fewshot, batch_size=args.batch_size)
    acts_0 = record_activations(lm, zeroshot, batch_size=args.batch_size)
    vector = SteeringVector.from_tensor(
        (acts_k - acts_0).mean(0),
        model_id=lm.name,
        n_layers=lm.n_layers,
        method="in_task_icl_enhancement",
        params={"task": task.name, "n_train": args.n_train, "k": args.k, "seed": args.seed},
    )
    L = lm.n_layers
    layers = args.layers or sorted({L // 4, L // 2, (3 * L) // 4})
    dev = list(task.split("dev"))[: args.dev] if "dev" in task.splits else pool[-args.dev :]
    print(f"choosing layer in {layers} and alpha in {args.alphas} on {len(dev)} dev examples")
    best = (evaluate(lm, task, examples=dev, batch_size=args.batch_size).accuracy, None, 0.0)
    print(f"  dev unsteered accuracy={best[0]:.3f}")
    for layer in layers:
        for alpha in args.alphas:
            with steer(lm, vector, alpha=alpha, layers=[layer]):
                acc = evaluate(lm, task, examples=dev, batch_size=args.batch_size).accuracy
            print(f"  dev layer={layer:2d} alpha={alpha:5.2f} accuracy={acc:.3f}")
            if acc > best[0]:
                best = (acc, layer, alpha)
    before = evaluate(lm, task, sample=args.n_test, batch_size=args.batch_size)
    print(f"zero-shot test accuracy (n={before.n}): {before.accuracy:.3f}")
    if best[1] is None:
        print("no (layer, alpha) beat zero-shot on dev; steering is not applied")
        print(f"steered test accuracy (none chosen: alpha=0, n={before.n}): {before.accuracy:.3f}")
    else:
        with steer(lm, vector, alpha=best[2], layers=[best[1]]):
            after = evaluate(lm, task, sample=args.n_test, batch_size=args.batch_size)
        print(
            f"steered test accuracy (layer={best[1]}, alpha={best[2]}, n={after.n}): "
            f"{after.accuracy:.3f}"
        )
    print(f"total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
