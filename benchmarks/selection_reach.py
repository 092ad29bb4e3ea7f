"""Does CAST's selection see the target? Selected sets per target on a real model.

For each target, CAST's steps 1-2 as `CAST._fit` runs them (the same tuning rows kept out, the
same candidates for every target: ``n_candidates`` per source, drawn with the seed), then the
selection under the spec's graph (queries linked to their k nearest candidates, each task's
states centred on its mean) and under the former graph (a plain kNN graph over the union of
candidates and queries, uncentred). Printed as JSON: per target and graph, the query-candidate
edges, the share of queries the selected set reaches, the coverage F(S) and the pick after
which it stops growing; per pair of targets, the Jaccard overlap |S_a & S_b| / |S_a | S_b| of
the selected sets. The candidates' states are recorded once and shared by the targets.

    python benchmarks/selection_reach.py --model gemma-3-270m \
        --targets arc_challenge financial_phrasebank social_iqa --n-queries 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import random

import torch
import torch.nn.functional as F

import castlib
from castlib.methods.cast import CAST
from castlib.methods.tuning import row_keys
from castlib.selection import DEFAULT_GAMMA, diffusion_matrix, greedy_coverage, knn_graph


def former_selection(
    cand_h: torch.Tensor, query_h: torch.Tensor, m: int, k: int, steps: int, seed: int
) -> tuple[list[int], dict[str, float]]:
    """The selection before the spec changed: union kNN graph over the normalised, uncentred
    [candidates; queries], T-step diffusion, the same greedy (it ran on whatever coverage was
    left, zero included)."""
    n = cand_h.shape[0]
    e = F.normalize(torch.cat([cand_h, query_h]).double(), dim=1)
    adj = knn_graph(e, k)
    infl = diffusion_matrix(adj, steps)[n:, :n]
    ids, log = greedy_coverage(infl, e[:n], m, DEFAULT_GAMMA, seed)
    reached = (infl[:, ids] > 0).any(dim=1).double().mean()
    return ids, {
        "n_query_candidate_edges": int(adj[n:, :n].sum()),
        "share_queries_reached": float(reached),
        "coverage": log[-1]["coverage"],
    }


def saturation(curve: list[float]) -> int:
    """The number of picks after which the coverage curve no longer grows."""
    return next(i + 1 for i, c in enumerate(curve) if c >= curve[-1] - 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sources", nargs="+", default=["sst2", "ag_news", "commonsense_qa"])
    parser.add_argument("--targets", nargs="+", required=True)
    parser.add_argument("--n-candidates", type=int, default=256)
    parser.add_argument("--n-queries", type=int, default=16)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    lm = castlib.load_model(args.model, device="cpu")
    sources = [castlib.load_task(name) for name in args.sources]
    cast = CAST(
        m=args.m,
        n_candidates=args.n_candidates,
        n_queries=args.n_queries,
        batch_size=args.batch_size,
    )
    cand_h, keys, picks, out = None, None, {}, {"targets": {}}
    for name in args.targets:
        target = castlib.load_task(name)
        rows = cast.tuning_rows(sources, target, args.seed)
        candidates, queries = cast.draw(sources, target, random.Random(args.seed), row_keys(rows))
        these = [f"{t.name}:{ex.id}" for t, ex in candidates]
        layer = lm.n_layers // 2
        if cand_h is None:
            cand_h, keys = cast._embed(lm, candidates, layer), these
        assert these == keys, "the candidates differ between targets"
        query_h = cast._embed(lm, [(target, q) for q in queries], layer)
        tasks = [t.name for t, _ in candidates]
        new_ids = cast.choose(cand_h, query_h, args.seed, tasks, target.name)
        log = cast.info["selection_log"]
        old_ids, old = former_selection(
            cand_h, query_h, args.m, cast.params.graph_k, cast.params.diffusion_steps, args.seed
        )
        picks[name] = {"spec": set(new_ids), "former": set(old_ids)}
        out["targets"][name] = {
            "n_queries": len(queries),
            "spec": {
                "n_query_candidate_edges": log["n_query_candidate_edges"],
                "share_queries_reached": log["share_targets_reached"],
                "coverage": log["coverage"],
                "coverage_stops_growing_after": saturation(log["coverage_curve"]),
                "selected_per_source": {
                    t: sum(tasks[i] == t for i in new_ids) for t in args.sources
                },
            },
            "former": old,
        }
    out["jaccard"] = {
        f"{a} / {b}": {
            graph: len(picks[a][graph] & picks[b][graph]) / len(picks[a][graph] | picks[b][graph])
            for graph in ("spec", "former")
        }
        for a, b in itertools.combinations(args.targets, 2)
    }
    out["setup"] = {**vars(args), "n_candidates_total": len(keys or []), "embed_layer": layer}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
