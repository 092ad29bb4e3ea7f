"""Influential and diverse selection of source samples (CAST method, steps 1-2; CAST_SPEC.md).

Pure functions of embedding matrices (no model): the caller embeds the source candidates (and,
optionally, unlabelled target queries) and passes the rows in. Four modules:
`castlib.selection.graph` (centring and the graph), `castlib.selection.diffusion` (diffusion
and influence),
`castlib.selection.greedy` (coverage and the greedy pickers) and
`castlib.selection.selector` (`select`, `select_with_log` and the named variants).

Embeddings. Each task's rows are centred on that task's mean before L2-normalising
(``center="per_task"``, the default; ``"none"`` only normalises): ``e_i = (x_i - mu_t) /
||x_i - mu_t||``. The candidates are centred per source task (``candidate_tasks``; one task
when not given), the queries on the target's mean. Without this the instruction template's
shared offset dominates the cosine (0.986-0.998 among one task's candidates on the 1.5B model).

Graph. Every candidate is linked to its ``k`` nearest other candidates and every query to its
``k`` nearest candidates (cosine; never query to query); the links are symmetrised by union
(`selection_graph`). The former graph, a plain kNN graph over the union of candidates and
queries (`knn_graph` of the stacked rows), gave zero query-candidate edges on every
cross-domain target of the 1.5B model: each query's neighbours were queries of its own task.

Influence and coverage. ``A_T = P^T`` with ``P = D^{-1} (W + I)`` the lazy random walk
(`diffusion_matrix`); ``A_T[q, s]`` is the influence of candidate ``s`` on node ``q``. The
objective is the coverage of the target queries (all candidates when no queries are given),
normalised by their number, ``F(S) = (1 / |Q|) sum_{q in Q} max_{s in S} A_T[q, s]``, so
``0 <= F <= 1``. The spec's unnormalised sum with weight ``gamma'`` selects what this objective
selects with ``gamma = gamma' / |Q|``; the default `DEFAULT_GAMMA` = 0.5 / 64 is the spec's 0.5
at its default of 64 queries (keeping 0.5 on the normalised objective would weigh redundancy
64 times more and make the greedy a diversity-only pick).

Variants (`SELECTION_METHODS`): ``random`` (a seeded sample), ``similarity`` (top-``m`` by mean
cosine to the queries, or to the candidates' centroid), ``influence`` (the greedy with
``gamma = 0``), ``diversity`` (farthest point / k-center in cosine distance, started nearest to
the centroid) and ``cast``: greedy ``argmax_u F(S + u) - F(S) - gamma * max_{s in S}
cos(e_u, e_s)`` until ``|S| = m``. Every variant is deterministic given its inputs and ``seed``
(ties go to the earliest candidate of a seeded permutation); ``diversity`` and ``cast`` never
pick an exact duplicate while a non-duplicate remains.

Diagnostics and refusals. `select_with_log` logs, for every variant, the number of
query-candidate edges, the share of target queries the selected set reaches (``A_T[q, s] > 0``
for some selected ``s``) and the coverage curve (``F`` after each pick). A ``cast`` or
``influence`` selection whose coverage is zero is refused with an error (never silently
reduced to diversity), as are more picks than candidates and a task whose embeddings are all
identical (centring makes them zero). Fewer queries than ``k`` is allowed: queries link to
candidates, not to each other.
"""

from .diffusion import diffusion_matrix, influence_matrix
from .graph import (
    CENTERINGS,
    center_embeddings,
    knn_graph,
    prepare_embeddings,
    selection_graph,
)
from .greedy import coverage, greedy_coverage, trace
from .selector import DEFAULT_GAMMA, SELECTION_METHODS, select, select_with_log

__all__ = [
    "CENTERINGS",
    "DEFAULT_GAMMA",
    "SELECTION_METHODS",
    "center_embeddings",
    "coverage",
    "diffusion_matrix",
    "greedy_coverage",
    "influence_matrix",
    "knn_graph",
    "prepare_embeddings",
    "select",
    "select_with_log",
    "selection_graph",
    "trace",
]
