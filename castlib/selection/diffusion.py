"""Diffusion over the selection graph and the influence matrix (CAST method, step 2).

* :func:`diffusion_matrix`: the lazy random walk ``P = D^{-1} (W + I)`` and ``A_T = P^T``
  (T-th matrix power). ``A_T[q, s]`` is the value a unit signal placed on node ``s`` leaves
  on node ``q`` after ``T`` averaging steps ``x <- P x`` (the probability that a ``T``-step
  walk from ``q`` ends at ``s``): the influence of candidate ``s`` on ``q``. With all nodes as
  targets, ``F({s})`` is then the mean column entry of ``A_T``, large for candidates in dense
  regions (the transposed, mass-conserving reading would make every ``F({s})`` equal, since
  rows of ``A_T`` sum to 1, so it is not used).
* :func:`influence_matrix`: ``I[q, s] = A_T[q, s]`` on the graph of
  `castlib.selection.graph.selection_graph`, restricted to target rows (the queries, or every
  candidate when no queries are given) and candidate columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .graph import check_k, check_steps, prepare_embeddings, selection_sparse

__all__ = ["diffusion_matrix", "influence_entries", "influence_matrix"]


def diffusion_matrix(adj: Tensor, steps: int = 2) -> Tensor:
    """``T``-step diffusion operator ``A_T = P^T`` of the lazy random walk on ``adj``.

    ``W = adj + I`` (a unit self loop on every node, so isolated nodes keep their own signal and
    every node covers itself), ``P = D^{-1} W`` with ``D = diag(W 1)`` (each row sums to 1), and
    ``A_T = P^T`` (``A_0 = I``). ``A_T[q, s]`` is the value left on node ``q`` by ``T`` averaging
    steps ``x <- P x`` of a unit signal placed on node ``s``; rows of ``A_T`` sum to 1.

    Args:
        adj: ``[n, n]`` non-negative adjacency, dense or sparse COO.
        steps: number of diffusion steps ``T >= 0``.

    Returns:
        ``[n, n]`` tensor, dense for dense input and coalesced sparse COO for sparse input.
    """
    steps = check_steps(steps)
    if not isinstance(adj, Tensor):
        adj = torch.as_tensor(adj)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square [n, n] matrix, got shape {tuple(adj.shape)}")
    n = adj.shape[0]
    dtype = adj.dtype if adj.dtype in (torch.float32, torch.float64) else torch.float32
    if adj.is_sparse:
        a = adj.coalesce().to(dtype)
        vals = a.values()
        if torch.isnan(vals).any() or torch.isinf(vals).any():
            raise ValueError("adj contains NaN or infinite values")
        if (vals < 0).any():
            raise ValueError("adj must be non-negative")
        eye = torch.arange(n)
        idx = torch.cat([a.indices(), torch.stack([eye, eye])], dim=1)
        val = torch.cat([vals, torch.ones(n, dtype=dtype)])
        w = torch.sparse_coo_tensor(idx, val, (n, n), check_invariants=True).coalesce()
        deg = torch.zeros(n, dtype=dtype).index_add_(0, w.indices()[0], w.values())
        p = torch.sparse_coo_tensor(
            w.indices(), w.values() / deg[w.indices()[0]], (n, n), check_invariants=True
        ).coalesce()
        out = torch.sparse_coo_tensor(
            torch.stack([eye, eye]), torch.ones(n, dtype=dtype), (n, n), check_invariants=True
        ).coalesce()
        with warnings.catch_warnings():
            # torch.sparse.mm goes through CSR internally and warns that CSR support is "beta"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            for _ in range(steps):
                out = torch.sparse.mm(out, p).coalesce()
        return out
    a = adj.to(dtype)
    if not torch.isfinite(a).all():
        raise ValueError("adj contains NaN or infinite values")
    if (a < 0).any():
        raise ValueError("adj must be non-negative")
    w = a + torch.eye(n, dtype=dtype)
    p = w / w.sum(dim=1, keepdim=True)
    return torch.linalg.matrix_power(p, steps)


def influence_entries(
    cand: Tensor, queries: Tensor | None, k: int, steps: int
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Sparse entries of ``I[q, s] = A_T[q, s]`` (targets x candidates) on prepared rows.

    Returns ``(target_idx, cand_idx, values, n_targets, n_query_candidate_edges)`` (float64
    values, non-zero entries only); the last is the number of undirected edges of
    :func:`selection_graph` between a query and a candidate (0 without queries)."""
    n = cand.shape[0]
    adj = selection_sparse(cand, queries, k)
    rows, cols = adj.indices()
    qc_edges = int(((rows >= n) & (cols < n)).sum())  # each undirected edge is stored twice
    a_t = diffusion_matrix(adj.to(torch.float64), steps)
    tgt, src = a_t.indices()  # A_T[q, s]: influence of node s on node q
    val = a_t.values()
    if queries is None:
        keep = src < n  # every node is a candidate and a target
        return tgt[keep], src[keep], val[keep], n, 0
    keep = (src < n) & (tgt >= n)
    return tgt[keep] - n, src[keep], val[keep], queries.shape[0], qc_edges


def influence_matrix(
    candidates: Tensor,
    queries: Tensor | None = None,
    k: int = 10,
    steps: int = 2,
    *,
    candidate_tasks: Sequence[str] | None = None,
    query_task: str = "queries",
    center: str = "per_task",
) -> Tensor:
    """Dense influence matrix ``I[q, s] = A_T[q, s]`` of candidate ``s`` on target node ``q``.

    The rows are prepared as the selection prepares them (:func:`prepare_embeddings`: centred
    per task unless ``center="none"``, then normalised), the graph is :func:`selection_graph`
    and ``A_T`` comes from :func:`diffusion_matrix`; rows are restricted to the target nodes
    (the queries, in order, or every candidate when ``queries is None``: then ``I = A_T``) and
    columns to the candidates.

    Returns:
        float64 ``[n_targets, n_candidates]`` tensor.
    """
    k = check_k(k)
    steps = check_steps(steps)
    cand, q = prepare_embeddings(candidates, queries, candidate_tasks, query_task, center)
    if cand.shape[0] == 0:
        raise ValueError("candidates has no rows")
    t_idx, c_idx, val, n_targets, _ = influence_entries(cand, q, k, steps)
    out = torch.zeros(n_targets, cand.shape[0], dtype=torch.float64)
    out[t_idx, c_idx] = val
    return out
