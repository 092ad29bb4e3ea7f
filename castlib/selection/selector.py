"""`select` and `select_with_log`: the named selection variants and the selection log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .diffusion import influence_entries
from .graph import as_int, check_k, check_steps, graph_sizes, prepare_embeddings
from .greedy import (
    DEFAULT_GAMMA,
    check_gamma,
    check_m,
    farthest_point,
    greedy_entries,
    priority,
    top_similarity,
)

__all__ = ["DEFAULT_GAMMA", "SELECTION_METHODS", "select", "select_with_log"]

SELECTION_METHODS: tuple[str, ...] = ("random", "similarity", "influence", "diversity", "cast")
"""Names accepted by :func:`select`'s ``method`` argument."""


def _zero_coverage(method: str, n_targets: int, qc_edges: int, steps: int) -> ValueError:
    hint = (
        "with diffusion_steps=0 the influence matrix is the identity and no query (never a "
        "candidate) receives any; use diffusion_steps >= 1"
        if steps == 0
        else "the selected candidates have no path to any target query in the graph"
    )
    return ValueError(
        f"selection {method!r} reaches none of the {n_targets} target queries (coverage "
        f"F(S) = 0; {qc_edges} query-candidate edges, diffusion_steps={steps}): {hint}. A "
        "zero coverage is refused, never reduced to diversity alone"
    )


def select_with_log(
    candidates: torch.Tensor,
    m: int,
    method: str = "cast",
    queries: torch.Tensor | None = None,
    k: int = 10,
    steps: int = 2,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    *,
    candidate_tasks: Sequence[str] | None = None,
    query_task: str = "queries",
    center: str = "per_task",
) -> tuple[list[int], dict[str, Any]]:
    """:func:`select` plus its log: ``(ids, log)``, ``log`` a JSON-ready dict.

    Every variant's log has ``method``, ``center``, ``n_candidates``, ``n_queries`` (0 without
    queries), the graph (``graph_k`` as asked, ``graph_k_candidates`` and ``graph_k_queries``
    after clamping, ``diffusion_steps``, ``n_targets``: the target nodes of ``F``,
    ``n_query_candidate_edges``: undirected graph edges between a query and a candidate, 0
    without queries, ``n_targets_reached``: target nodes some candidate has influence on),
    ``gamma`` (the weight the steps' penalties use; 0 for ``influence``), the selection's
    ``coverage`` ``F(S)``, ``coverage_curve`` (``F`` after each pick), ``share_targets_reached``
    (the share of target nodes ``q`` with ``A_T[q, s] > 0`` for some selected ``s``) and
    ``steps``: one dict per pick, in order, with ``id``, ``coverage_gain``,
    ``diversity_penalty``, ``max_cos``, ``objective`` and ``coverage`` (the ``cast`` objective's
    terms for that pick, whatever the variant ranked by; ``similarity`` adds its score).
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; valid methods: {SELECTION_METHODS}")
    k = check_k(k)
    steps = check_steps(steps)
    seed = as_int(seed, "seed")
    gamma = 0.0 if method == "influence" else check_gamma(gamma)
    cand, q = prepare_embeddings(candidates, queries, candidate_tasks, query_task, center)
    n = cand.shape[0]
    m = check_m(m, n)
    t_idx, c_idx, val, n_targets, qc_edges = influence_entries(cand, q, k, steps)
    entries = (t_idx, c_idx, val, n_targets)
    perm, rank = priority(n, seed)
    if method in ("cast", "influence"):
        if val.numel() == 0:
            raise _zero_coverage(method, n_targets, qc_edges, steps)
        ids, log_steps = greedy_entries(entries, cand, m, gamma, rank, dedup=method == "cast")
    else:
        score = None
        if method == "random":
            ids = [int(i) for i in perm[:m]]
        elif method == "similarity":
            ids, score = top_similarity(cand, q, m, rank)
        else:
            ids = farthest_point(cand, m, rank)
        _, log_steps = greedy_entries(entries, cand, m, gamma, rank, False, ids)
        if score is not None:
            for step in log_steps:
                step["similarity"] = float(score[step["id"]])
    curve = [step["coverage"] for step in log_steps]
    if method in ("cast", "influence") and curve[-1] <= 0.0:
        raise _zero_coverage(method, n_targets, qc_edges, steps)
    picked = torch.isin(c_idx, torch.tensor(ids))
    k_cand, k_query = graph_sizes(n, k)
    return ids, {
        "method": method,
        "center": center,
        "n_candidates": n,
        "n_queries": 0 if q is None else int(q.shape[0]),
        "gamma": gamma,
        "graph_k": k,
        "graph_k_candidates": k_cand,
        "graph_k_queries": k_query if q is not None else 0,
        "diffusion_steps": steps,
        "n_targets": n_targets,
        "n_query_candidate_edges": qc_edges,
        "n_targets_reached": int(torch.unique(t_idx).numel()),
        "share_targets_reached": int(torch.unique(t_idx[picked]).numel()) / max(n_targets, 1),
        "coverage": curve[-1],
        "coverage_curve": curve,
        "steps": log_steps,
    }


def select(
    candidates: torch.Tensor,
    m: int,
    method: str = "cast",
    queries: torch.Tensor | None = None,
    k: int = 10,
    steps: int = 2,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    *,
    candidate_tasks: Sequence[str] | None = None,
    query_task: str = "queries",
    center: str = "per_task",
) -> list[int]:
    """Select ``m`` distinct candidate indices with one of :data:`SELECTION_METHODS`.

    The embeddings are centred per task and normalised (``center``; the package docstring
    has the math), the graph is `castlib.selection.selection_graph`, and for ``cast`` the
    greedy step adds ``argmax_u [F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)]`` with
    ``F(S) = (1 / |Q|) sum_q max_{s in S} A_T[q, s]``; ``influence`` is the same with
    ``gamma = 0``. :func:`select_with_log` also returns what each step saw.

    Args:
        candidates: ``[n, d]`` candidate embeddings (raw states: centred and normalised inside).
        m: number of indices to return, ``1 <= m <= n``.
        method: one of :data:`SELECTION_METHODS`.
        queries: optional ``[q, d]`` target query embeddings (the targets of the coverage
            objective and the reference of ``similarity``; ignored by ``random`` and
            ``diversity``). Queries link to candidates only, so fewer queries than ``k`` is
            fine; one query (or identical ones) cannot be centred and is refused.
        k: neighbours in the graph (``>= 1``; clamped to ``n - 1`` among candidates and ``n``
            from a query, the clamped values logged).
        steps: diffusion steps ``T >= 0``.
        gamma: weight ``>= 0`` of the redundancy penalty (``cast`` only).
        seed: seeds the ``random`` sample and the tie-breaking priority of the other methods.
        candidate_tasks: the source task of each candidate row (the groups centred apart);
            None: one task.
        query_task: the target's name (named in errors).
        center: ``"per_task"`` (default) or ``"none"`` (`castlib.selection.CENTERINGS`).

    Returns:
        ``m`` distinct ints in ``[0, n)``, in selection order (``similarity``: by decreasing score).

    Raises:
        ValueError: ``m`` out of range (more than the candidates), unknown ``method`` or
            ``center``, ``k < 1``, ``steps < 0``, bad ``gamma``, non-finite embeddings, wrong
            ranks or dimensions, a task whose embeddings are all identical, or a ``cast`` /
            ``influence`` selection whose coverage of the target queries is zero.
    """
    return select_with_log(
        candidates,
        m,
        method,
        queries,
        k,
        steps,
        gamma,
        seed,
        candidate_tasks=candidate_tasks,
        query_task=query_task,
        center=center,
    )[0]
