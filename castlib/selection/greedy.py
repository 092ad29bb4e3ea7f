"""The coverage objective and the greedy pickers of the selection (CAST method, step 2).

* :func:`coverage`: ``F(S) = (1 / |Q|) sum_{q in Q} max_{s in S} I[q, s]`` over the target rows
  ``Q`` of an influence matrix ``I`` (`castlib.selection.graph.influence_matrix`).
* :func:`greedy_coverage`: step ``i`` adds ``argmax_u F(S + u) - F(S) - gamma * max_{s in S}
  cos(e_u, e_s)`` (penalty 0 while ``S`` is empty).
* farthest-point (k-center) and top-similarity pickers for the ``diversity`` and ``similarity``
  variants, and :func:`trace`, which scores any pick order with the ``cast`` objective so that
  every variant's log carries the same per-step fields.

Ties: whenever several candidates tie for the best score (within a relative tolerance of
``1e-9``) the one that comes first in the seeded permutation ``torch.randperm(n,
generator=torch.Generator().manual_seed(seed))`` wins. With ``dedup`` an exact duplicate
(cosine ``>= 1 - 1e-6``) of a chosen candidate is skipped while a non-duplicate remains.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .graph import as_embeddings, as_int

__all__ = ["DEFAULT_GAMMA", "coverage", "greedy_coverage", "trace"]

#: Diversity weight on the normalised coverage: the spec's 0.5 on the summed coverage of its
#: default 64 target queries (see the package docstring).
DEFAULT_GAMMA = 0.5 / 64

_DUPLICATE_COS = 1.0 - 1e-6  # cosine at or above which two candidates count as exact duplicates
_TIE_RTOL = 1e-9  # relative tolerance under which two greedy scores count as tied


def coverage(influence: Tensor, selected: list[int] | Tensor) -> float:
    """Normalised coverage ``F(S) = (1 / n_targets) sum_q max_{s in S} I[q, s]`` (``F({}) = 0``).

    Args:
        influence: ``[n_targets, n_candidates]`` matrix (`castlib.selection.influence_matrix`).
        selected: candidate indices ``S``.
    """
    idx = torch.as_tensor(selected, dtype=torch.long).reshape(-1)
    if idx.numel() == 0 or influence.shape[0] == 0:
        return 0.0
    return float(influence[:, idx].max(dim=1).values.sum()) / influence.shape[0]


def check_m(m: object, n: int) -> int:
    """``m`` as an int in ``[1, n]``, else an error naming ``m`` and the candidates."""
    m = as_int(m, "m")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if m > n:
        raise ValueError(
            f"cannot select m={m} distinct samples from only n={n} candidates; "
            f"lower m or give more candidates"
        )
    return m


def check_gamma(gamma: object) -> float:
    """``gamma`` as a finite float ``>= 0``."""
    value = float(gamma)  # type: ignore[arg-type]
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"gamma must be a finite number >= 0, got {value}")
    return value


def priority(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded permutation of ``range(n)`` and each index's rank in it (tie priority)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    rank = torch.empty(n, dtype=torch.long)
    rank[perm] = torch.arange(n)  # rank[i] = position of candidate i in the seeded permutation
    return perm, rank


def _best(score: Tensor, eligible: Tensor, rank: Tensor) -> int:
    """Index maximising ``score`` over ``eligible``; near-ties go to the lowest ``rank``."""
    masked = torch.where(eligible, score, torch.full_like(score, -torch.inf))
    best = masked.max()
    tol = _TIE_RTOL * max(1.0, abs(float(best)))
    tied = eligible & (masked >= best - tol)
    pr = torch.where(tied, rank, torch.full_like(rank, rank.numel()))
    return int(torch.argmin(pr))


def _non_duplicates(eligible: Tensor, max_cos: Tensor | None) -> Tensor:
    """Restrict ``eligible`` to non-duplicates of the selection, unless none would remain."""
    if max_cos is None:
        return eligible
    strict = eligible & (max_cos < _DUPLICATE_COS)
    return strict if bool(strict.any()) else eligible


def _gains(t_idx: Tensor, c_idx: Tensor, val: Tensor, cur: Tensor, n: int) -> Tensor:
    """``F(S + u) - F(S) = (1 / |Q|) sum_q max(I[q, u] - cur[q], 0)`` for every ``u`` at once
    (one ``index_add`` over the non-zero entries)."""
    raw = torch.zeros(n, dtype=torch.float64).index_add_(
        0, c_idx, torch.clamp(val - cur[t_idx], min=0.0)
    )
    return raw / max(cur.numel(), 1)


def _step(
    pick: int, gain: Tensor, penalty: Tensor, max_cos: Tensor | None, cur: Tensor
) -> dict[str, Any]:
    return {
        "id": pick,
        "coverage_gain": float(gain[pick]),
        "diversity_penalty": float(penalty[pick]),
        "max_cos": None if max_cos is None else float(max_cos[pick]),
        "objective": float(gain[pick] - penalty[pick]),
        "coverage": float(cur.sum()) / max(cur.numel(), 1),
    }


def greedy_entries(
    entries: tuple[Tensor, Tensor, Tensor, int],
    e: Tensor,
    m: int,
    gamma: float,
    rank: Tensor,
    dedup: bool,
    order: list[int] | None = None,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedy ``argmax_u F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)`` on the sparse
    entries ``(t_idx, c_idx, val, n_targets)`` of ``I`` with unit rows ``e``; returns the
    indices and one log dict per step. With ``order`` the picks are that order instead (each
    step scored the same way: :func:`trace`)."""
    t_idx, c_idx, val, n_targets = entries
    n = e.shape[0]
    cur = torch.zeros(n_targets, dtype=torch.float64)
    max_cos: Tensor | None = None
    eligible = torch.ones(n, dtype=torch.bool)
    chosen: list[int] = []
    log: list[dict[str, Any]] = []
    for i in range(m if order is None else len(order)):
        gain = _gains(t_idx, c_idx, val, cur, n)
        penalty = torch.zeros_like(gain) if max_cos is None else gamma * max_cos
        if order is None:
            allowed = _non_duplicates(eligible, max_cos) if dedup else eligible
            pick = _best(gain - penalty, allowed, rank)
        else:
            pick = order[i]
        chosen.append(pick)
        eligible[pick] = False
        col = c_idx == pick
        cur[t_idx[col]] = torch.maximum(cur[t_idx[col]], val[col])
        log.append(_step(pick, gain, penalty, max_cos, cur))
        cos_new = e @ e[pick]
        max_cos = cos_new if max_cos is None else torch.maximum(max_cos, cos_new)
    return chosen, log


def trace(
    influence: Tensor, candidates: Tensor, order: list[int], gamma: float
) -> list[dict[str, Any]]:
    """Per pick of ``order`` (in order): its coverage gain, diversity penalty
    ``gamma * max_{s earlier} cos``, objective and ``F`` after it, as :func:`greedy_coverage`
    logs them; ``candidates`` are used as given (normalised inside, not centred)."""
    infl = as_embeddings(influence, "influence").to(torch.float64)
    e = F.normalize(as_embeddings(candidates, "candidates").to(torch.float64), dim=1)
    t_idx, c_idx = infl.nonzero(as_tuple=True)
    entries = (t_idx, c_idx, infl[t_idx, c_idx], infl.shape[0])
    rank = torch.arange(e.shape[0])
    return greedy_entries(entries, e, len(order), gamma, rank, False, list(order))[1]


def greedy_coverage(
    influence: Tensor,
    candidates: Tensor,
    m: int,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    dedup: bool = True,
) -> tuple[list[int], list[dict[str, Any]]]:
    """The ``cast`` greedy on a given influence matrix (`castlib.selection.select` builds it
    from the graph).

    Step ``i`` adds ``argmax_u [F(S + u) - F(S) - gamma * max_{s in S} cos(e_u, e_s)]`` with the
    normalised coverage ``F`` of :func:`coverage`, ``e`` the candidates normalised as given (not
    centred); near-ties go to the earliest candidate of the seeded permutation, and with
    ``dedup`` an exact duplicate of a chosen candidate is skipped while a non-duplicate remains
    (``dedup=False`` with ``gamma=0`` is the ``influence`` ablation).

    Returns:
        ``(ids, steps)``: the ``m`` indices in selection order and one dict per step with
        ``id``, ``coverage_gain``, ``diversity_penalty`` (``gamma * max_cos``), ``max_cos`` (None
        at the first step), ``objective`` (gain minus penalty) and ``coverage`` (``F`` after it).
    """
    cand = as_embeddings(candidates, "candidates")
    infl = as_embeddings(influence, "influence").to(torch.float64)
    n = cand.shape[0]
    if infl.shape[1] != n:
        raise ValueError(f"influence has {infl.shape[1]} columns but there are {n} candidates")
    if (infl < 0).any():
        raise ValueError("influence must be non-negative")
    m, gamma, seed = check_m(m, n), check_gamma(gamma), as_int(seed, "seed")
    t_idx, c_idx = infl.nonzero(as_tuple=True)
    _, rank = priority(n, seed)
    e = F.normalize(cand.to(torch.float64), dim=1)
    entries = (t_idx, c_idx, infl[t_idx, c_idx], infl.shape[0])
    return greedy_entries(entries, e, m, gamma, rank, dedup)


def farthest_point(e: Tensor, m: int, rank: Tensor) -> list[int]:
    """k-center greedy in cosine distance on unit rows ``e``: start at the row nearest to the
    centroid, then repeatedly add ``argmin_u max_{s in S} cos(e_u, e_s)``."""
    n = e.shape[0]
    eligible = torch.ones(n, dtype=torch.bool)
    start = _best(e @ e.mean(dim=0), eligible, rank)
    chosen = [start]
    eligible[start] = False
    max_cos = e @ e[start]
    for _ in range(m - 1):
        pick = _best(-max_cos, _non_duplicates(eligible, max_cos), rank)
        chosen.append(pick)
        eligible[pick] = False
        max_cos = torch.maximum(max_cos, e @ e[pick])
    return chosen


def top_similarity(
    e: Tensor, queries: Tensor | None, m: int, rank: Tensor
) -> tuple[list[int], Tensor]:
    """Top-``m`` unit rows by ``mean_q cos(e_u, e_q)`` (or the cosine to the candidates'
    centroid without queries, up to a positive factor); ties by ``rank``. Returns the ids and
    every candidate's score."""
    ref = e if queries is None else queries
    score = e @ ref.mean(dim=0)  # = mean_q cos(e_u, e_q)
    by_rank = torch.argsort(rank)
    order = by_rank[torch.argsort(-score[by_rank], stable=True)]
    return [int(i) for i in order[:m]], score
