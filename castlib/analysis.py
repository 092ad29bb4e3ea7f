"""Pure functions for the activation-pattern analysis (spec, "Analyses and experiments" item 1).

* :func:`matrix_entropy` -- Shannon entropy of the spectrum of the trace-normalised Gram matrix of
  stacked last-token states (zero-shot vs few-shot, per layer).
* :func:`cosine_matrix` -- task x task cosine similarity of enhancement vectors ``v_l``.
* :func:`split_half_ceiling` / :func:`random_floor` (and its exact expectation
  :func:`expected_abs_cosine`) -- the within-task ceiling and the random-direction floor the
  cross-task cosines are read against.
* :func:`pca_2d` / :func:`first_principal_direction` -- PCA of per-example deltas.
* :func:`pair_cosines` / :func:`placebo_comparison` -- the cross-task cosine of the real ICL
  enhancement against that of a placebo prefix (`castlib.placebo`), per layer, with a
  two-level bootstrap interval (queries within tasks, then task pairs).
* :func:`most_predicted_share` -- the share of rows given the most frequent prediction (a method
  above 0.9 has collapsed to one label).

All computations run in float64 on CPU; inputs may be any real tensor (or array-like).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "cosine_matrix",
    "expected_abs_cosine",
    "first_principal_direction",
    "matrix_entropy",
    "most_predicted_share",
    "pair_cosines",
    "pca_2d",
    "placebo_comparison",
    "random_floor",
    "split_half_ceiling",
]


def _as_f64(x: object, name: str, ndim: int) -> Tensor:
    """Return ``x`` as a finite float64 CPU tensor with ``ndim`` dimensions (else ValueError)."""
    t = torch.as_tensor(x)
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _sign_fix(vectors: Tensor) -> Tensor:
    """Flip each row so that its entry of largest absolute value is positive (first one on ties)."""
    if vectors.numel() == 0:
        return vectors
    idx = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vectors.gather(1, idx))
    signs[signs == 0] = 1.0
    return vectors * signs


def matrix_entropy(z: Tensor, *, normalize_rows: bool = True, center: bool = False) -> float:
    """Matrix (von Neumann / spectral Shannon) entropy of the stacked states ``Z``, in nats.

    With ``G = Z Z^T`` (``[n, n]``), ``lambda_i`` its eigenvalues and ``p_i = lambda_i / tr(G)``,

        ``H(Z) = - sum_i p_i log p_i``  (``0 log 0 = 0``), so ``0 <= H <= log(min(n, d))``.

    ``H = 0`` iff the rows span one direction (rank 1); ``H = log n`` iff the rows are orthogonal
    with equal norms. The eigenvalues are computed as the squared singular values of ``Z`` in
    float64.

    Args:
        z: ``[n, d]`` matrix, one state per row (e.g. last-token states of ``n`` prompts at one
            layer).
        normalize_rows: L2-normalise each row first (default ``True``) so every example weighs the
            same and the measure reflects directions only, not the norm growth across layers.
        center: subtract the row mean (the mean state) first (default ``False``; applied before the
            row normalisation). Centring turns the measure into the entropy of the covariance
            spectrum, at most ``log(n - 1)``.

    Raises:
        ValueError: non-finite input, wrong rank, empty input or an all-zero ``Z`` (``tr(G) = 0``).
    """
    x = _as_f64(z, "z", 2)
    if x.numel() == 0:
        raise ValueError(f"z must be non-empty, got shape {tuple(x.shape)}")
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    if normalize_rows:
        x = torch.nn.functional.normalize(x, dim=1)
    eig = torch.linalg.svdvals(x) ** 2
    total = eig.sum()
    if not total > 0:
        raise ValueError(
            "z has zero Frobenius norm (after centring/normalisation): entropy undefined"
        )
    p = eig / total
    p = p[p > 0]
    entropy = -float((p * torch.log(p)).sum())
    return max(entropy, 0.0)


def cosine_matrix(vectors: Mapping[str, Tensor]) -> pd.DataFrame:
    """Pairwise cosine similarity ``C[a, b] = <v_a, v_b> / (||v_a|| ||v_b||)`` of named vectors.

    Args:
        vectors: task name -> ``[d]`` vector (all of the same ``d``, non-zero, finite).

    Returns:
        Symmetric ``DataFrame`` (index and columns are the names in mapping order) of floats in
        ``[-1, 1]`` with a unit diagonal (needs pandas, the ``notebooks`` extra).
    """
    import pandas as pd

    names = list(vectors)
    if not names:
        return pd.DataFrame(dtype=float)
    rows = [_as_f64(vectors[name], f"vectors[{name!r}]", 1) for name in names]
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"all vectors must have the same dimension, got {sorted(dims)}")
    mat = torch.stack(rows)
    norms = mat.norm(dim=1)
    if (norms == 0).any():
        zero = [name for name, nrm in zip(names, norms.tolist(), strict=True) if nrm == 0]
        raise ValueError(f"cosine undefined for zero vectors: {zero}")
    unit = mat / norms[:, None]
    gram = unit @ unit.T
    cos = (0.5 * (gram + gram.T)).clamp(-1.0, 1.0)  # exactly symmetric
    cos.fill_diagonal_(1.0)
    return pd.DataFrame(cos.numpy(), index=names, columns=names)


def _cos(a: Tensor, b: Tensor) -> float:
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else 0.0


def split_half_ceiling(deltas: Tensor, n_splits: int = 20, seed: int = 0) -> tuple[float, float]:
    """Within-task ceiling for the cross-task cosine of mean enhancement vectors.

    For each of ``n_splits`` seeded random permutations the ``n`` deltas of one task are split into
    two disjoint halves ``H_1`` (``floor(n/2)`` rows) and ``H_2`` (the other ``ceil(n/2)`` rows) and
    ``c_j = cos(mean(H_1), mean(H_2))`` is recorded (0 if a half-mean is the zero vector). Two
    tasks' vectors estimated from that many examples cannot be expected to agree more than this.

    Args:
        deltas: ``[n, d]`` per-example deltas of one task at one layer, ``n >= 2``.
        n_splits: number of random splits, ``>= 1``.
        seed: seed of the permutations (a local ``torch.Generator``).

    Returns:
        ``(mean_j c_j, std_j c_j)`` with the sample standard deviation (ddof = 1; 0 when
        ``n_splits == 1``).
    """
    x = _as_f64(deltas, "deltas", 2)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"split_half_ceiling needs at least 2 deltas, got {n}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    gen = torch.Generator().manual_seed(seed)
    half = n // 2
    vals = []
    for _ in range(n_splits):
        perm = torch.randperm(n, generator=gen)
        vals.append(_cos(x[perm[:half]].mean(dim=0), x[perm[half:]].mean(dim=0)))
    c = torch.tensor(vals, dtype=torch.float64)
    return float(c.mean()), float(c.std()) if n_splits > 1 else 0.0


def random_floor(
    d: int, n_pairs: int = 1000, seed: int = 0, *, absolute: bool = True
) -> tuple[float, float]:
    """Random-direction floor: cosine between independent isotropic Gaussian directions in ``R^d``.

    Draws ``n_pairs`` pairs ``(g, h)`` with ``g, h ~ N(0, I_d)`` i.i.d. and records ``|cos(g, h)|``
    (``absolute=True``, default) or the signed ``cos(g, h)``. The absolute value is the default
    because the signed cosine averages to 0; ``E|cos| ~ sqrt(2 / (pi d))`` for large ``d`` is the
    magnitude unrelated directions reach by chance (the signed std is ``1/sqrt(d)``).

    Returns:
        ``(mean, std)`` of the recorded values (sample std, ddof = 1; 0 when ``n_pairs == 1``).
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n_pairs, d, generator=gen, dtype=torch.float64)
    h = torch.randn(n_pairs, d, generator=gen, dtype=torch.float64)
    c = torch.nn.functional.cosine_similarity(g, h, dim=1)
    if absolute:
        c = c.abs()
    return float(c.mean()), float(c.std()) if n_pairs > 1 else 0.0


def _principal_axes(x: Tensor, center: bool) -> tuple[Tensor, Tensor]:
    """Return ``(x_used, Vh)``: the optionally centred data and its sign-fixed right singular rows.

    Each row of ``Vh`` is flipped so that its entry of largest absolute value is positive.
    """
    xc = x - x.mean(dim=0, keepdim=True) if center else x
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return xc, _sign_fix(vh)


def pca_2d(x: Tensor) -> Tensor:
    """Scores of the rows of ``x`` on its first two principal components.

    ``X_c = X - 1 mean(X)``, ``X_c = U S V^T`` (thin SVD, ``torch.linalg.svd``), scores
    ``Y = X_c V_{:, :2}``. Sign convention (deterministic): each principal axis ``V_{:, j}`` is
    flipped so that its entry of largest absolute value is positive. Components beyond the rank of
    ``X_c`` have (near) zero scores; when ``min(n, d) < 2`` the missing columns are zeros.

    Args:
        x: ``[n, d]`` data, ``n >= 1``.

    Returns:
        ``[n, 2]`` scores in float64 (or in ``x``'s dtype when it is float32).
    """
    t = torch.as_tensor(x)
    out_dtype = torch.float32 if t.dtype == torch.float32 else torch.float64
    data = _as_f64(t, "x", 2)
    n = data.shape[0]
    if n == 0:
        raise ValueError("x must have at least one row")
    xc, vh = _principal_axes(data, center=True)
    comps = vh[:2]
    scores = xc @ comps.T
    if scores.shape[1] < 2:
        scores = torch.cat([scores, torch.zeros(n, 2 - scores.shape[1], dtype=scores.dtype)], dim=1)
    return scores.to(out_dtype)


def first_principal_direction(
    x: Tensor, align_with: Tensor | None = None, *, center: bool = True
) -> Tensor:
    """Unit vector along the first principal direction of the rows of ``x``.

    ``v = argmax_{||u|| = 1} ||X' u||`` = the first right singular vector of ``X'``, where
    ``X' = X - 1 mean(X)`` (``center=True``, default: the direction of largest variance around the
    mean) or ``X' = X`` (``center=False``: the direction of largest second moment, which follows the
    mean when the rows share a large common component, as the ICV-style "first principal direction
    of the deltas" does). Sign: if ``align_with`` is given and ``<v, align_with> != 0`` the sign
    makes ``<v, align_with> > 0``; otherwise the entry of largest absolute value is positive.

    Args:
        x: ``[n, d]`` data (e.g. per-example deltas at one layer).
        align_with: optional ``[d]`` reference (e.g. the mean delta) for the sign.
        center: subtract the mean row before the SVD (default ``True``).

    Returns:
        ``[d]`` float64 unit vector.

    Raises:
        ValueError: non-finite input, mismatched dimensions, or ``X'`` identically zero (no
            direction).
    """
    data = _as_f64(x, "x", 2)
    if data.shape[0] == 0:
        raise ValueError("x must have at least one row")
    xc, vh = _principal_axes(data, center=center)
    if not xc.abs().max() > 0:
        raise ValueError("x has no variation (all-zero after optional centring): no direction")
    v = vh[0]
    if align_with is not None:
        ref = _as_f64(align_with, "align_with", 1)
        if ref.shape[0] != v.shape[0]:
            raise ValueError(
                f"align_with has dimension {ref.shape[0]} but x has dimension {v.shape[0]}"
            )
        if float(v @ ref) < 0:
            v = -v
    return v / v.norm()


def expected_abs_cosine(d: int) -> float:
    """Exact ``E|cos(g, h)|`` for independent ``g, h ~ N(0, I_d)`` (limit of :func:`random_floor`).

    ``E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d + 1)/2))`` (``2/pi`` for ``d = 2``, ``1/2`` for
    ``d = 3``, ``~ sqrt(2 / (pi d))`` for large ``d``).
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


def pair_cosines(vectors: Tensor) -> Tensor:
    """Cosines of the ``P = T (T - 1) / 2`` task pairs ``(i < j)``, in ``torch.triu_indices``
    order: ``[T, ..., d] -> [P, ...]`` (float64; a zero vector gives cosine 0)."""
    v = torch.nn.functional.normalize(torch.as_tensor(vectors).to(torch.float64), dim=-1)
    i, j = torch.triu_indices(v.shape[0], v.shape[0], 1)
    return (v[i] * v[j]).sum(-1)


def _resampled_means(deltas: Tensor, idx: Tensor) -> Tensor:
    """Means of ``deltas[idx[c]]`` for each row ``c`` of ``idx`` (``[c, n]`` row indices)."""
    w = torch.zeros(idx.shape[0], deltas.shape[0], dtype=torch.float64)
    w.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return torch.einsum("cn,n...->c...", w / idx.shape[1], deltas)


def placebo_comparison(
    real: Sequence[Tensor],
    placebo: Sequence[Tensor],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-task cosine of the real ICL enhancement against a placebo's, layer by layer.

    With ``v_t = mean_x delta_t(x)`` (real) and ``w_t`` the same for the placebo deltas of the
    same queries, the estimate is the mean over task pairs ``p = (a, b)`` of
    ``cos(v_a, v_b) - cos(w_a, w_b)``. Its percentile interval comes from a two-level
    bootstrap: each replicate resamples every task's queries with replacement (the same rows for
    real and placebo, which share their zero-shot states: paired), recomputes the vectors and
    the pair cosines, then resamples the ``P`` pairs with replacement and averages the
    differences. Pairs that share a task are not independent, so with few tasks the pair level
    understates the spread; with one pair (two tasks) only the query level remains.

    Args:
        real, placebo: one tensor per task, ``[n_t, L, d]`` (or ``[n_t, d]``), row ``i`` of the
            placebo the same query as row ``i`` of the real deltas; at least two tasks.
        n_boot: bootstrap replicates; level: interval coverage; seed: ``torch.Generator`` seed.

    Returns:
        ``DataFrame`` with one row per layer: ``layer``, ``real`` and ``placebo`` (mean pair
        cosine), ``difference`` (real - placebo), ``low``, ``high``, ``n_pairs``.
    """
    import pandas as pd

    if len(real) != len(placebo) or len(real) < 2:
        raise ValueError(
            f"real and placebo need the same number of tasks, at least 2; got {len(real)} and "
            f"{len(placebo)}"
        )
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot}, {level}")
    ndim = torch.as_tensor(real[0]).ndim
    if ndim not in (2, 3):
        raise ValueError(f"real[0] must be [n, d] or [n, L, d], got {ndim} dimensions")
    r = [_as_f64(x, f"real[{t}]", ndim) for t, x in enumerate(real)]
    p = [_as_f64(x, f"placebo[{t}]", ndim) for t, x in enumerate(placebo)]
    for t, (a, b) in enumerate(zip(r, p, strict=True)):
        if a.shape != b.shape or a.shape[1:] != r[0].shape[1:] or a.shape[0] == 0:
            raise ValueError(
                f"task {t}: real {tuple(a.shape)} and placebo {tuple(b.shape)} must be the same "
                f"non-empty shape, with the trailing shape {tuple(r[0].shape[1:])} of task 0"
            )
    if ndim == 2:
        r, p = [x[:, None] for x in r], [x[:, None] for x in p]
    cos_r = pair_cosines(torch.stack([x.mean(0) for x in r]))  # [P, L]
    cos_p = pair_cosines(torch.stack([x.mean(0) for x in p]))
    n_pairs, n_layers = cos_r.shape
    gen = torch.Generator().manual_seed(seed)
    boots = []
    for start in range(0, n_boot, 50):
        c = min(50, n_boot - start)
        idx = [torch.randint(x.shape[0], (c, x.shape[0]), generator=gen) for x in r]
        vr = torch.stack([_resampled_means(x, i) for x, i in zip(r, idx, strict=True)], 1)
        vp = torch.stack([_resampled_means(x, i) for x, i in zip(p, idx, strict=True)], 1)
        diff = pair_cosines(vr.transpose(0, 1)) - pair_cosines(vp.transpose(0, 1))  # [P, c, L]
        pick = torch.randint(n_pairs, (c, n_pairs), generator=gen)
        boots.append(diff.transpose(0, 1).gather(1, pick[..., None].expand(-1, -1, n_layers)))
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(torch.cat(boots).mean(1), q, dim=0)
    return pd.DataFrame(
        {
            "layer": range(n_layers),
            "real": cos_r.mean(0).numpy(),
            "placebo": cos_p.mean(0).numpy(),
            "difference": (cos_r - cos_p).mean(0).numpy(),
            "low": low.numpy(),
            "high": high.numpy(),
            "n_pairs": n_pairs,
        }
    )


def most_predicted_share(pred: Sequence[object]) -> float:
    """Share of rows whose prediction is the most frequent one, ``max_c #{i: pred_i = c} / n``:
    1.0 when a method answers one label on every row (collapsed), ``1 / n_labels`` at best for
    balanced answers. ``pred``: one prediction (label index or string) per evaluated row."""
    if len(pred) == 0:
        raise ValueError("pred must hold at least one prediction")
    return max(Counter(pred).values()) / len(pred)
