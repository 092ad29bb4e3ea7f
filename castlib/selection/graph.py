"""Embeddings and the selection graph (CAST method, steps 1-2).

Everything here is a pure function of embedding matrices: the caller embeds the source
candidates (and, optionally, unlabelled target queries) and passes the rows in.

* :func:`center_embeddings`: each task's rows centred on that task's mean, then L2-normalised,
  ``e_i = (x_i - mu_{t(i)}) / ||x_i - mu_{t(i)}||`` (``center="per_task"``, the default), or
  only normalised, ``e_i = x_i / ||x_i||`` (``center="none"``, the ablation). The instruction
  template gives every prompt of a task a shared offset that otherwise dominates the cosine
  (cosines of 0.986-0.998 among the candidates of one task on the 1.5B model), so that
  neighbours would be found by task, not by content. A task whose rows are all identical
  (a single row included) centres to zero rows and is refused.
* :func:`knn_graph`: the plain binary cosine kNN graph of one set of rows,
  ``K[i, j] = 1[j in N_k(i)]`` (self excluded by index), symmetrised by union
  ``W = max(K, K^T)``.
* :func:`selection_graph`: the graph the spec's selection uses over the nodes
  ``[candidates; queries]``: every candidate is linked to its ``k`` nearest other candidates,
  every query to its ``k`` nearest *candidates* (never to another query), and the links are
  symmetrised by union. A plain kNN graph over the union of candidates and queries does not
  work across tasks: each query's nearest neighbours are other queries of its own task, so no
  edge reaches a candidate (measured on the 1.5B model: zero query-candidate edges on every
  cross-domain target). ``k`` is clamped to ``n - 1`` among candidates and to ``n`` for the
  queries' candidate neighbours; the clamped values are reported (`graph_sizes`).
* `castlib.selection.diffusion` diffuses over this graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CENTERINGS",
    "center_embeddings",
    "graph_sizes",
    "knn_graph",
    "prepare_embeddings",
    "selection_graph",
]

#: Values of ``center``: per-task centring before normalising (the spec's default), or none.
CENTERINGS: tuple[str, ...] = ("per_task", "none")

_KNN_CHUNK = 2048  # rows of the similarity matrix materialised at once when building the graph
_ZERO_RTOL = 1e-9  # a centred row at most this share of the task's largest row norm counts as 0


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def as_embeddings(x: object, name: str) -> Tensor:
    """Return ``x`` as a finite floating 2-D tensor (float64 kept, anything else -> float32)."""
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, dim], got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.detach().cpu()
    t = t if t.dtype == torch.float64 else t.to(torch.float32)
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN values")
    if torch.isinf(t).any():
        raise ValueError(f"{name} contains infinite values")
    return t


def as_int(value: object, name: str) -> int:
    """``value`` as an int (bools refused), else a TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from exc


def check_k(k: object) -> int:
    """The number of graph neighbours, ``>= 1``."""
    k = as_int(k, "k")
    if k < 1:
        raise ValueError(f"k (number of graph neighbours) must be >= 1, got {k}")
    return k


def check_steps(steps: object) -> int:
    """The number of diffusion steps, ``>= 0``."""
    steps = as_int(steps, "steps")
    if steps < 0:
        raise ValueError(f"steps (diffusion steps T) must be >= 0, got {steps}")
    return steps


# ----------------------------------------------------------------------------------------------
# embeddings
# ----------------------------------------------------------------------------------------------


def center_embeddings(
    emb: Tensor,
    tasks: Sequence[str] | None = None,
    center: str = "per_task",
    name: str = "candidates",
) -> Tensor:
    """Rows centred on their task's mean, then L2-normalised (float64).

    ``center="per_task"``: ``e_i = (x_i - mu_t) / ||x_i - mu_t||`` with ``mu_t`` the mean of the
    rows of task ``t = tasks[i]`` (all rows one task when ``tasks`` is None);
    ``center="none"``: ``e_i = x_i / ||x_i||``. A zero row stays zero (its cosine to everything
    is 0).

    Raises:
        ValueError: unknown ``center``; ``tasks`` not one name per row; a task whose rows are
            all identical (a single row included): centring makes every one of them zero, so
            the task has no content to compare (the error names the task).
    """
    if center not in CENTERINGS:
        raise ValueError(f"center must be one of {CENTERINGS}, got {center!r}")
    x = as_embeddings(emb, name).to(torch.float64)
    if center == "none":
        return F.normalize(x, dim=1)
    labels = [name] * x.shape[0] if tasks is None else [str(t) for t in tasks]
    if len(labels) != x.shape[0]:
        raise ValueError(
            f"{name}: {len(labels)} task names for {x.shape[0]} rows (one name per row needed)"
        )
    out = torch.empty_like(x)
    for task in dict.fromkeys(labels):
        rows = torch.tensor([i for i, t in enumerate(labels) if t == task])
        centred = x[rows] - x[rows].mean(dim=0, keepdim=True)
        scale = float(x[rows].norm(dim=1).max())
        if float(centred.norm(dim=1).max()) <= _ZERO_RTOL * max(scale, 1e-300):
            raise ValueError(
                f"task {task!r} ({name}): its {rows.numel()} embedding(s) are all identical, so "
                "centring on the task's mean makes every one zero (center='per_task'); give "
                "the task at least 2 distinct rows, or pass center='none'"
            )
        out[rows] = F.normalize(centred, dim=1)
    return out


def prepare_embeddings(
    candidates: object,
    queries: object | None = None,
    candidate_tasks: Sequence[str] | None = None,
    query_task: str = "queries",
    center: str = "per_task",
) -> tuple[Tensor, Tensor | None]:
    """Validated, centred (per ``center``) and L2-normalised float64 ``(candidates, queries)``.

    The candidates are centred per task of ``candidate_tasks`` (one name per row; None: one
    task), the queries (one task, ``query_task``) on their own mean."""
    cand = as_embeddings(candidates, "candidates")
    if queries is None:
        return center_embeddings(cand, candidate_tasks, center, "candidates"), None
    q = as_embeddings(queries, "queries")
    if q.shape[1] != cand.shape[1]:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but candidates have dimension {cand.shape[1]}"
        )
    if q.shape[0] == 0:
        raise ValueError("queries has no rows; pass queries=None to cover all nodes instead")
    cand_e = center_embeddings(cand, candidate_tasks, center, "candidates")
    return cand_e, center_embeddings(q, [query_task] * q.shape[0], center, "queries")


# ----------------------------------------------------------------------------------------------
# graphs
# ----------------------------------------------------------------------------------------------


def _top_k(e: Tensor, ref: Tensor, k: int, exclude_self: bool) -> Tensor:
    """``[rows, k]`` indices of the ``k`` rows of ``ref`` most cosine-similar to each row of
    ``e`` (unit rows); with ``exclude_self`` row ``i`` of ``e`` is row ``i`` of ``ref``."""
    out = []
    for start in range(0, e.shape[0], _KNN_CHUNK):
        stop = min(start + _KNN_CHUNK, e.shape[0])
        sim = e[start:stop] @ ref.T
        if exclude_self:
            local = torch.arange(stop - start)
            sim[local, local + start] = -torch.inf
        out.append(torch.topk(sim, k, dim=1).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def _binary(rows: Tensor, cols: Tensor, n: int, dtype: torch.dtype, symmetric: bool) -> Tensor:
    """Coalesced sparse 0/1 ``[n, n]`` matrix with ones at ``(rows, cols)`` (and the
    transposed pairs with ``symmetric``)."""
    if symmetric:
        rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])
    adj = torch.sparse_coo_tensor(
        torch.stack([rows, cols]),
        torch.ones(rows.numel(), dtype=dtype),
        (n, n),
        check_invariants=True,
    ).coalesce()
    # duplicated (i, j) pairs were summed by coalesce(): reset every stored weight to 1
    return torch.sparse_coo_tensor(
        adj.indices(), torch.ones_like(adj.values()), (n, n), check_invariants=True
    ).coalesce()


def _knn_sparse(emb: Tensor, k: int, symmetric: bool) -> Tensor:
    """Binary cosine kNN adjacency of validated ``emb`` (sparse COO); ``k`` clamped to n - 1."""
    n = emb.shape[0]
    k_eff = min(k, n - 1)
    e = F.normalize(emb, dim=1)
    if k_eff <= 0:
        rows = cols = torch.zeros(0, dtype=torch.long)
    else:
        cols = _top_k(e, e, k_eff, exclude_self=True).reshape(-1)
        rows = torch.arange(n).repeat_interleave(k_eff)
    return _binary(rows, cols, n, emb.dtype, symmetric)


def knn_graph(emb: Tensor, k: int = 10, symmetric: bool = True) -> Tensor:
    """Binary cosine k-nearest-neighbour adjacency matrix of one set of rows.

    With ``e_i = x_i / ||x_i||`` and ``N_k(i)`` the ``k`` indices ``j != i`` with the largest
    ``<e_i, e_j>`` (self excluded by index, so duplicates link to each other), the directed
    graph is ``K[i, j] = 1[j in N_k(i)]``; with ``symmetric=True`` (default) the result is the
    union ``W = max(K, K^T)``. ``k >= n`` is clamped to ``n - 1``. This is the candidates' part of
    :func:`selection_graph`; over the union of candidates and queries it is the graph the spec
    no longer uses (its queries link to queries).

    Returns:
        Dense ``[n, n]`` 0/1 tensor with a zero diagonal, dtype float32 (float64 for float64 input).
    """
    x = as_embeddings(emb, "emb")
    k = check_k(k)
    if x.shape[0] == 0:
        return torch.zeros(0, 0, dtype=x.dtype)
    return _knn_sparse(x, k, symmetric).to_dense()


def graph_sizes(n_candidates: int, k: int) -> tuple[int, int]:
    """``(k among candidates, k from a query to candidates)`` after clamping:
    ``(min(k, n - 1), min(k, n))``."""
    return min(k, n_candidates - 1), min(k, n_candidates)


def selection_sparse(cand: Tensor, queries: Tensor | None, k: int) -> Tensor:
    """Sparse adjacency of :func:`selection_graph` on validated rows (nodes: candidates, then
    queries)."""
    n = cand.shape[0]
    k_cand, k_query = graph_sizes(n, k)
    e = F.normalize(cand, dim=1)
    rows = cols = torch.zeros(0, dtype=torch.long)
    if k_cand > 0:
        cols = _top_k(e, e, k_cand, exclude_self=True).reshape(-1)
        rows = torch.arange(n).repeat_interleave(k_cand)
    total = n
    if queries is not None:
        nq = queries.shape[0]
        q_cols = _top_k(F.normalize(queries, dim=1), e, k_query, exclude_self=False).reshape(-1)
        rows = torch.cat([rows, n + torch.arange(nq).repeat_interleave(k_query)])
        cols = torch.cat([cols, q_cols])
        total = n + nq
    return _binary(rows, cols, total, cand.dtype, symmetric=True)


def selection_graph(candidates: Tensor, queries: Tensor | None = None, k: int = 10) -> Tensor:
    """The selection graph over the nodes ``[candidates; queries]`` (CAST_SPEC step 2).

    Every candidate ``i`` lists its ``min(k, n - 1)`` most cosine-similar other candidates,
    every query its ``min(k, n)`` most cosine-similar candidates (queries never list queries,
    and candidates never list queries); ``W`` is the union of the listed pairs and their
    transposes (an edge whenever either node lists the other). Rows are L2-normalised inside;
    centre them first (:func:`prepare_embeddings`) for the spec's embeddings.

    Returns:
        Dense ``[n + q, n + q]`` symmetric 0/1 tensor with a zero diagonal and no
        query-query edge.
    """
    cand = as_embeddings(candidates, "candidates")
    q = None if queries is None else as_embeddings(queries, "queries")
    if q is not None and q.shape[1] != cand.shape[1]:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but candidates have dimension {cand.shape[1]}"
        )
    if q is not None and q.dtype != cand.dtype:
        cand, q = cand.to(torch.float64), q.to(torch.float64)
    k = check_k(k)
    if cand.shape[0] == 0:
        raise ValueError("candidates has no rows")
    return selection_sparse(cand, q, k).to_dense()
