"""Influential and diverse selection of source samples (CAST method, step 2).

Everything here is a pure function of embedding matrices (no model is needed): the caller embeds the
source candidates (and, optionally, unlabelled target queries) and passes the embedding rows in.

Graph and diffusion conventions (used consistently by every function in this module)
------------------------------------------------------------------------------------
* Embeddings are L2-normalised row-wise, so ``cos(e_i, e_j) = <e_i, e_j>``. A zero row stays zero
  (its cosine to everything is 0).
* :func:`knn_graph` builds a binary cosine k-nearest-neighbour graph ``K`` (``K[i, j] = 1`` iff
  ``j`` is among the ``k`` most cosine-similar nodes to ``i``, ``j != i``). By default it is
  symmetrised by union, ``W = max(K, K^T)``, so that the random walk is reversible and a node that
  nobody lists as a neighbour can still be reached through its own neighbours.
* :func:`diffusion_matrix` forms the lazy random walk ``P = D^{-1} (W + I)`` (``D`` the row sums of
  ``W + I``; the unit self loop keeps an isolated node's own signal and lets every node cover
  itself) and returns ``A_T = P^T`` (the T-th matrix power). Diffusing a unit signal placed on
  candidate ``s`` by neighbourhood averaging, ``x <- P x`` (label propagation), for ``T`` steps
  leaves the value ``A_T[q, s]`` on node ``q``; equivalently ``A_T[q, s]`` is the probability that a
  ``T``-step walk from ``q`` ends at ``s``. This is the influence of ``s`` on ``q`` in the spec's
  objective, used with exactly that index order (see :func:`influence_matrix` and
  :func:`coverage`). With all nodes as targets, ``F({s})`` is the mean column entry of ``A_T``,
  large for candidates in dense regions. (The transposed reading, "mass conserving" diffusion
  ``A_T[s, q]``, would make every ``F({s})`` equal when all nodes are targets, since rows of
  ``A_T`` sum to 1, so it is not used.)

Coverage objective (normalised)
-------------------------------
``F(S) = (1 / |Q|) sum_{q in Q} max_{s in S} A_T[q, s]`` over the target nodes ``Q``: the spec's
sum over target nodes divided by their number, so ``0 <= F(S) <= 1`` and the diversity weight
``gamma`` trades the same share of coverage against redundancy for a 7-row target as for a
2,000-row one. (The spec's unnormalised sum with weight ``gamma'`` selects exactly what this
objective selects with ``gamma = gamma' / |Q|``; the greedy choice is invariant to duplicating
every target node.) The default `DEFAULT_GAMMA` = 0.5 / 64 is the spec's ``gamma' = 0.5`` at
its default of 64 target queries, so at that size the default selects what the spec's
objective selects; keeping 0.5 on the normalised objective would weigh redundancy 64 times
more and turn the greedy into a diversity-only pick.

Selection methods (:data:`SELECTION_METHODS`)
--------------------------------------------
* ``random``: a seeded uniform sample of ``m`` distinct candidates.
* ``similarity``: top-``m`` by mean cosine to the target queries,
  ``score(u) = mean_q cos(e_u, e_q)``; without queries, ``score(u) = cos(e_u, c)`` up to a positive
  factor, ``c`` the mean of the normalised candidates.
* ``influence``: the ``cast`` greedy with ``gamma = 0`` (pure coverage; no duplicate guard).
* ``diversity``: farthest-point (k-center) greedy in cosine distance ``1 - cos``: start at the
  candidate nearest (highest cosine) to the candidate centroid, then repeatedly add
  ``argmin_u max_{s in S} cos(e_u, e_s)``. Queries are ignored.
* ``cast``: kNN graph over candidates + queries, ``T``-step diffusion, and greedy maximisation of
  ``F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)`` (penalty 0 while ``S`` is empty). Target
  nodes are the query nodes, or all nodes (candidates) when no queries are given.

Selection log: :func:`select_with_log` returns, with the indices, what each greedy step saw (for
``cast``/``influence``: the chosen index, its coverage gain ``F(S + u) - F(S)``, its diversity
penalty ``gamma * max_{s in S} cos(e_u, e_s)``, its objective (gain minus penalty) and ``F`` after
the step) and the graph's size, including the number of query-candidate edges (few such edges mean
the queries and candidates sit in separate regions of the embedding space, e.g. because their
prompt formats differ, and coverage cannot tell candidates apart).

Determinism and ties: every method is a deterministic function of its inputs and ``seed``. The seed
draws a random priority permutation of the candidates; whenever several candidates tie for the best
score (within a relative tolerance of ``1e-9``), the one that comes first in the seeded
permutation ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` wins; ``random``
returns the first ``m`` entries of that same permutation. ``diversity`` and ``cast`` never pick an
exact duplicate (cosine ``>= 1 - 1e-6``, so positive rescalings count) of an already selected
candidate while a non-duplicate remains available; ``similarity`` and ``influence`` are the
unguarded ablations.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Diversity weight on the normalised coverage: the spec's 0.5 on the summed coverage of its
#: default 64 target queries (see the module docstring).
DEFAULT_GAMMA = 0.5 / 64

__all__ = [
    "DEFAULT_GAMMA",
    "SELECTION_METHODS",
    "coverage",
    "diffusion_matrix",
    "greedy_coverage",
    "influence_matrix",
    "knn_graph",
    "select",
    "select_with_log",
]

SELECTION_METHODS: tuple[str, ...] = ("random", "similarity", "influence", "diversity", "cast")
"""Names accepted by :func:`select`'s ``method`` argument."""

_DUPLICATE_COS = 1.0 - 1e-6  # cosine at or above which two candidates count as exact duplicates
_TIE_RTOL = 1e-9  # relative tolerance under which two greedy scores count as tied
_KNN_CHUNK = 2048  # rows of the similarity matrix materialised at once when building the graph


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _as_embeddings(x: object, name: str) -> Tensor:
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


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from exc


def _check_k(k: object) -> int:
    k = _as_int(k, "k")
    if k < 1:
        raise ValueError(f"k (number of graph neighbours) must be >= 1, got {k}")
    return k


def _check_steps(steps: object) -> int:
    steps = _as_int(steps, "steps")
    if steps < 0:
        raise ValueError(f"steps (diffusion steps T) must be >= 0, got {steps}")
    return steps


# ----------------------------------------------------------------------------------------------
# graph construction and diffusion
# ----------------------------------------------------------------------------------------------


def _knn_sparse(emb: Tensor, k: int, symmetric: bool) -> Tensor:
    """Binary cosine kNN adjacency of validated ``emb`` as a coalesced sparse COO tensor.

    ``k`` is clamped to ``n - 1``. Self pairs are excluded by index (not by value), so duplicated
    embeddings are each other's neighbours.
    """
    n = emb.shape[0]
    k_eff = min(k, n - 1)
    e = F.normalize(emb, dim=1)
    if k_eff <= 0:
        rows = torch.zeros(0, dtype=torch.long)
        cols = torch.zeros(0, dtype=torch.long)
    else:
        nbrs = []
        for start in range(0, n, _KNN_CHUNK):
            stop = min(start + _KNN_CHUNK, n)
            sim = e[start:stop] @ e.T
            local = torch.arange(stop - start)
            sim[local, local + start] = -torch.inf
            nbrs.append(torch.topk(sim, k_eff, dim=1).indices)
        cols = torch.cat(nbrs).reshape(-1)
        rows = torch.arange(n).repeat_interleave(k_eff)
    if symmetric:
        rows, cols = torch.cat([rows, cols]), torch.cat([cols, rows])
    adj = torch.sparse_coo_tensor(
        torch.stack([rows, cols]),
        torch.ones(rows.numel(), dtype=emb.dtype),
        (n, n),
        check_invariants=True,
    ).coalesce()
    # duplicated (i, j) pairs were summed by coalesce(): reset every stored weight to 1
    return torch.sparse_coo_tensor(
        adj.indices(), torch.ones_like(adj.values()), (n, n), check_invariants=True
    ).coalesce()


def knn_graph(emb: Tensor, k: int = 10, symmetric: bool = True) -> Tensor:
    """Binary cosine k-nearest-neighbour adjacency matrix.

    With ``e_i = x_i / ||x_i||`` (rows L2-normalised inside) and ``N_k(i)`` the ``k`` indices
    ``j != i`` with the largest ``<e_i, e_j>`` (self excluded by index, so duplicates link to each
    other), the directed graph is ``K[i, j] = 1[j in N_k(i)]``. With ``symmetric=True`` (default)
    the result is the union ``W = max(K, K^T)`` (an edge whenever either node lists the other),
    otherwise ``K`` itself (exactly ``k`` ones per row).

    Args:
        emb: ``[n, d]`` embeddings; must be finite.
        k: neighbours per node, ``>= 1``. If ``k >= n`` it is clamped to ``n - 1`` (a complete graph
            without self loops; no edges at all when ``n == 1``).
        symmetric: union-symmetrise the graph (default ``True``).

    Returns:
        Dense ``[n, n]`` 0/1 tensor with a zero diagonal, dtype float32 (float64 for float64 input).
    """
    x = _as_embeddings(emb, "emb")
    k = _check_k(k)
    if x.shape[0] == 0:
        return torch.zeros(0, 0, dtype=x.dtype)
    return _knn_sparse(x, k, symmetric).to_dense()


def diffusion_matrix(adj: Tensor, steps: int = 2) -> Tensor:
    """``T``-step diffusion operator ``A_T = P^T`` of the lazy random walk on ``adj``.

    ``W = adj + I`` (a unit self loop on every node, so isolated nodes keep their own signal and
    every node covers itself), ``P = D^{-1} W`` with ``D = diag(W 1)`` (row-normalised, each row
    sums to 1), and ``A_T = P^T`` (matrix power; ``A_0 = I``). ``A_T[q, s]`` is the value left on
    node ``q`` by ``T`` averaging steps ``x <- P x`` of a unit signal placed on node ``s`` (the
    probability that a ``T``-step walk from ``q`` ends at ``s``); rows of ``A_T`` sum to 1.

    Args:
        adj: ``[n, n]`` non-negative adjacency, dense or sparse COO (e.g. from :func:`knn_graph`).
        steps: number of diffusion steps ``T >= 0``.

    Returns:
        ``[n, n]`` tensor, dense for dense input and coalesced sparse COO for sparse input.
    """
    steps = _check_steps(steps)
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


def _prepare(candidates: object, queries: object | None) -> tuple[Tensor, Tensor | None]:
    cand = _as_embeddings(candidates, "candidates")
    if queries is None:
        return cand, None
    q = _as_embeddings(queries, "queries")
    if q.shape[1] != cand.shape[1]:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but candidates have dimension {cand.shape[1]}"
        )
    if q.shape[0] == 0:
        raise ValueError("queries has no rows; pass queries=None to cover all nodes instead")
    if q.dtype != cand.dtype:
        q, cand = q.to(torch.float64), cand.to(torch.float64)
    return cand, q


def _influence_entries(
    cand: Tensor, queries: Tensor | None, k: int, steps: int
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """Sparse entries of the influence matrix ``I[q, s] = A_T[q, s]`` (targets x candidates).

    Returns ``(target_idx, cand_idx, values, n_targets, n_query_candidate_edges)`` with float64
    values (only non-zero entries are listed); the last is the number of undirected edges of the
    kNN graph between a query node and a candidate node (0 without queries).
    """
    n = cand.shape[0]
    nodes = cand if queries is None else torch.cat([cand, queries])
    adj = _knn_sparse(nodes, k, symmetric=True)
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
    candidates: Tensor, queries: Tensor | None = None, k: int = 10, steps: int = 2
) -> Tensor:
    """Dense influence matrix ``I[q, s] = A_T[q, s]`` of candidate ``s`` on target node ``q``.

    The graph is the symmetric binary cosine kNN graph (:func:`knn_graph`) over the stacked nodes
    ``[candidates; queries]`` and ``I[q, s] = A_T[q, s]`` with ``A_T`` from :func:`diffusion_matrix`
    (rows restricted to the target nodes, columns to the candidates). Target nodes are the queries
    (rows ordered as ``queries``) or, when ``queries is None``, all candidates (then ``I = A_T``).

    Returns:
        float64 ``[n_targets, n_candidates]`` tensor.
    """
    k = _check_k(k)
    steps = _check_steps(steps)
    cand, q = _prepare(candidates, queries)
    if cand.shape[0] == 0:
        raise ValueError("candidates has no rows")
    t_idx, c_idx, val, n_targets, _ = _influence_entries(cand, q, k, steps)
    out = torch.zeros(n_targets, cand.shape[0], dtype=torch.float64)
    out[t_idx, c_idx] = val
    return out


def coverage(influence: Tensor, selected: list[int] | Tensor) -> float:
    """Normalised coverage ``F(S) = (1 / n_targets) sum_q max_{s in S} I[q, s]`` (``F({}) = 0``).

    The mean over the target nodes (rows) of the best influence any selected candidate has on
    them: the spec's sum over target nodes divided by their number (module docstring).

    Args:
        influence: ``[n_targets, n_candidates]`` matrix from :func:`influence_matrix`.
        selected: candidate indices ``S``.
    """
    idx = torch.as_tensor(selected, dtype=torch.long).reshape(-1)
    if idx.numel() == 0 or influence.shape[0] == 0:
        return 0.0
    return float(influence[:, idx].max(dim=1).values.sum()) / influence.shape[0]


# ----------------------------------------------------------------------------------------------
# greedy selection
# ----------------------------------------------------------------------------------------------


def _best(score: Tensor, eligible: Tensor, priority: Tensor) -> int:
    """Index maximising ``score`` over ``eligible``; near-ties go to the lowest ``priority``."""
    masked = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    best = masked.max()
    tol = _TIE_RTOL * max(1.0, abs(float(best)))
    tied = eligible & (masked >= best - tol)
    pr = torch.where(tied, priority, torch.full_like(priority, priority.numel()))
    return int(torch.argmin(pr))


def _non_duplicates(eligible: Tensor, max_cos: Tensor | None) -> Tensor:
    """Restrict ``eligible`` to non-duplicates of the selection, unless none would remain."""
    if max_cos is None:
        return eligible
    strict = eligible & (max_cos < _DUPLICATE_COS)
    return strict if bool(strict.any()) else eligible


def _priority(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded permutation of ``range(n)`` and each index's rank in it (tie priority)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    priority = torch.empty(n, dtype=torch.long)
    priority[perm] = torch.arange(n)  # priority[i] = rank of candidate i in the seeded permutation
    return perm, priority


def _greedy_entries(
    t_idx: Tensor,
    c_idx: Tensor,
    val: Tensor,
    n_targets: int,
    cand: Tensor,
    m: int,
    gamma: float,
    priority: Tensor,
    dedup: bool,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedy ``argmax_u F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)`` on the sparse
    entries ``(t_idx, c_idx, val)`` of ``I``; returns the indices and the per-step log.

    Marginal gains are computed for all candidates at once:
    ``F(S + u) - F(S) = (1 / n_targets) sum_q max(I[q, u] - cur[q], 0)`` with
    ``cur[q] = max_{s in S} I[q, s]``, one ``index_add`` over the non-zeros per step (at most
    ``n * n_targets``).
    """
    n = cand.shape[0]
    e = F.normalize(cand.to(torch.float64), dim=1)
    cur = torch.zeros(n_targets, dtype=torch.float64)
    max_cos: Tensor | None = None
    eligible = torch.ones(n, dtype=torch.bool)
    chosen: list[int] = []
    log: list[dict[str, Any]] = []
    for _ in range(m):
        gain = torch.zeros(n, dtype=torch.float64).index_add_(
            0, c_idx, torch.clamp(val - cur[t_idx], min=0.0)
        ) / max(n_targets, 1)
        penalty = torch.zeros_like(gain) if max_cos is None else gamma * max_cos
        score = gain - penalty
        pick = _best(score, _non_duplicates(eligible, max_cos) if dedup else eligible, priority)
        chosen.append(pick)
        eligible[pick] = False
        col = c_idx == pick
        cur[t_idx[col]] = torch.maximum(cur[t_idx[col]], val[col])
        log.append(
            {
                "id": pick,
                "coverage_gain": float(gain[pick]),
                "diversity_penalty": float(penalty[pick]),
                "max_cos": None if max_cos is None else float(max_cos[pick]),
                "objective": float(score[pick]),
                "coverage": float(cur.sum()) / max(n_targets, 1),
            }
        )
        cos_new = e @ e[pick]
        max_cos = cos_new if max_cos is None else torch.maximum(max_cos, cos_new)
    return chosen, log


def greedy_coverage(
    influence: Tensor,
    candidates: Tensor,
    m: int,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    dedup: bool = True,
) -> tuple[list[int], list[dict[str, Any]]]:
    """The ``cast`` greedy on a given influence matrix (``select`` builds it from the graph).

    Step ``i`` adds ``argmax_u [F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)]`` with the
    normalised coverage ``F`` of :func:`coverage`; near-ties go to the earliest candidate of the
    seeded permutation, and with ``dedup`` an exact duplicate (cosine ``>= 1 - 1e-6``) of a chosen
    candidate is skipped while a non-duplicate remains (``dedup=False`` with ``gamma=0`` is the
    ``influence`` ablation).

    Args:
        influence: ``[n_targets, n]`` non-negative matrix ``I[q, s]`` (:func:`influence_matrix`).
        candidates: ``[n, d]`` candidate embeddings (for the cosine penalty).
        m: number of indices, ``1 <= m <= n``.
        gamma: diversity weight ``>= 0``.
        seed: tie-breaking seed.
        dedup: skip exact duplicates of the selection while others remain.

    Returns:
        ``(ids, steps)``: the ``m`` indices in selection order and one dict per step with
        ``id``, ``coverage_gain``, ``diversity_penalty`` (``gamma * max_cos``), ``max_cos`` (None
        at the first step), ``objective`` (gain minus penalty) and ``coverage`` (``F`` after it).
    """
    cand = _as_embeddings(candidates, "candidates")
    infl = _as_embeddings(influence, "influence").to(torch.float64)
    n = cand.shape[0]
    if infl.shape[1] != n:
        raise ValueError(f"influence has {infl.shape[1]} columns but there are {n} candidates")
    if (infl < 0).any():
        raise ValueError("influence must be non-negative")
    m, gamma, seed = _check_m(m, n), _check_gamma(gamma), _as_int(seed, "seed")
    t_idx, c_idx = infl.nonzero(as_tuple=True)
    _, priority = _priority(n, seed)
    return _greedy_entries(
        t_idx, c_idx, infl[t_idx, c_idx], infl.shape[0], cand, m, gamma, priority, dedup
    )


def _farthest_point(
    cand: Tensor, m: int, priority: Tensor
) -> tuple[list[int], list[dict[str, Any]]]:
    """k-center greedy in cosine distance, started at the candidate nearest to the centroid."""
    n = cand.shape[0]
    e = F.normalize(cand.to(torch.float64), dim=1)
    eligible = torch.ones(n, dtype=torch.bool)
    start = _best(e @ e.mean(dim=0), eligible, priority)
    chosen = [start]
    log: list[dict[str, Any]] = [{"id": start, "max_cos": None}]
    eligible[start] = False
    max_cos = e @ e[start]
    for _ in range(m - 1):
        pick = _best(-max_cos, _non_duplicates(eligible, max_cos), priority)
        chosen.append(pick)
        log.append({"id": pick, "max_cos": float(max_cos[pick])})
        eligible[pick] = False
        max_cos = torch.maximum(max_cos, e @ e[pick])
    return chosen, log


def _top_similarity(
    cand: Tensor, queries: Tensor | None, m: int, priority: Tensor
) -> tuple[list[int], list[dict[str, Any]]]:
    """Top-``m`` by mean cosine to the queries (or the candidate centroid); ties by priority."""
    e = F.normalize(cand.to(torch.float64), dim=1)
    ref = e if queries is None else F.normalize(queries.to(torch.float64), dim=1)
    score = e @ ref.mean(dim=0)  # = mean_q cos(e_u, e_q)
    by_priority = torch.argsort(priority)
    order = by_priority[torch.argsort(-score[by_priority], stable=True)]
    ids = [int(i) for i in order[:m]]
    return ids, [{"id": i, "similarity": float(score[i])} for i in ids]


def _check_m(m: object, n: int) -> int:
    m = _as_int(m, "m")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if m > n:
        raise ValueError(f"cannot select m={m} distinct samples from only n={n} candidates")
    return m


def _check_gamma(gamma: object) -> float:
    value = float(gamma)  # type: ignore[arg-type]
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0, got {value}")
    return value


def select_with_log(
    candidates: Tensor,
    m: int,
    method: str = "cast",
    queries: Tensor | None = None,
    k: int = 10,
    steps: int = 2,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
) -> tuple[list[int], dict[str, Any]]:
    """:func:`select` plus its log: ``(ids, log)``, ``log`` a JSON-ready dict.

    ``log`` has ``method``, ``n_candidates``, ``n_queries`` (0 without queries) and ``steps`` (one
    dict per chosen index, in order, with ``id`` and what the method ranked it by: ``random``
    nothing; ``similarity`` its ``similarity``; ``diversity`` its ``max_cos`` to the earlier
    picks; ``cast``/``influence`` the fields of :func:`greedy_coverage`). ``cast``/``influence``
    add the graph: ``gamma``, ``graph_k``, ``diffusion_steps``, ``n_targets`` (target nodes of
    ``F``), ``n_query_candidate_edges`` (undirected kNN edges between a query and a candidate; 0
    without queries), ``n_targets_reached`` (target nodes some candidate has influence on) and
    ``coverage`` (``F`` of the whole selection).
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; valid methods: {SELECTION_METHODS}")
    k = _check_k(k)
    steps = _check_steps(steps)
    seed = _as_int(seed, "seed")
    gamma = _check_gamma(gamma)
    cand, q = _prepare(candidates, queries)
    n = cand.shape[0]
    m = _check_m(m, n)
    log: dict[str, Any] = {
        "method": method,
        "n_candidates": n,
        "n_queries": 0 if q is None else int(q.shape[0]),
    }
    perm, priority = _priority(n, seed)
    if method == "random":
        ids = [int(i) for i in perm[:m]]
        return ids, {**log, "steps": [{"id": i} for i in ids]}
    if method == "similarity":
        ids, log_steps = _top_similarity(cand, q, m, priority)
        return ids, {**log, "steps": log_steps}
    if method == "diversity":
        ids, log_steps = _farthest_point(cand, m, priority)
        return ids, {**log, "steps": log_steps}
    if method == "influence":
        gamma = 0.0
    t_idx, c_idx, val, n_targets, qc_edges = _influence_entries(cand, q, k, steps)
    ids, log_steps = _greedy_entries(
        t_idx, c_idx, val, n_targets, cand, m, gamma, priority, dedup=method == "cast"
    )
    return ids, {
        **log,
        "gamma": gamma,
        "graph_k": k,
        "diffusion_steps": steps,
        "n_targets": n_targets,
        "n_query_candidate_edges": qc_edges,
        "n_targets_reached": int(torch.unique(t_idx).numel()),
        "coverage": log_steps[-1]["coverage"],
        "steps": log_steps,
    }


def select(
    candidates: Tensor,
    m: int,
    method: str = "cast",
    queries: Tensor | None = None,
    k: int = 10,
    steps: int = 2,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
) -> list[int]:
    """Select ``m`` distinct candidate indices with one of :data:`SELECTION_METHODS`.

    See the module docstring for the exact definition of each method. For ``cast`` the greedy step
    adds ``argmax_u [F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)]`` with the normalised
    coverage ``F(S) = (1 / n_targets) sum_q max_{s in S} I[q, s]`` (:func:`influence_matrix`,
    :func:`coverage`); ``influence`` is the same with ``gamma = 0``. The graph uses
    ``min(k, n_nodes - 1)`` neighbours. :func:`select_with_log` also returns what each step saw.

    Args:
        candidates: ``[n, d]`` candidate embeddings (L2-normalised inside).
        m: number of indices to return, ``1 <= m <= n``.
        method: one of :data:`SELECTION_METHODS`.
        queries: optional ``[q, d]`` target query embeddings (targets of the coverage objective, the
            reference of ``similarity``; ignored by ``random`` and ``diversity``).
        k: neighbours in the kNN graph (``>= 1``; ``cast``/``influence`` only).
        steps: diffusion steps ``T >= 0`` (``cast``/``influence`` only).
        gamma: weight ``>= 0`` of the redundancy penalty (``cast`` only).
        seed: seeds the ``random`` sample and the tie-breaking priority of the other methods.

    Returns:
        ``m`` distinct ints in ``[0, n)``, in selection order (``similarity``: by decreasing score).

    Raises:
        ValueError: ``m`` out of range, unknown ``method``, ``k < 1``, ``steps < 0``, bad ``gamma``,
            non-finite embeddings, wrong ranks or mismatched embedding dimensions.
    """
    return select_with_log(candidates, m, method, queries, k, steps, gamma, seed)[0]
