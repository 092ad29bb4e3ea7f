"""Comparisons that count the seeds, and the collapse of a method onto one label.

A method fitted with several seeds and evaluated on the same test rows has two sources of
variance: the rows (sampling error, which more test rows reduce) and the fit (which more seeds
measure). Pooling the seeds row by row and bootstrapping the rows ignores the second.

* `seed_differences`: the per-seed paired differences ``d[s, r] = a_s[r] - b_s[r]`` of two
  methods (``a_s``: the mean of a's runs with seed ``s``; a method with a single seed, such as
  zero-shot, is paired with every seed of the other).
* `two_level_interval`: the percentile interval of the mean difference from a two-level
  bootstrap: each resample draws ``S`` seeds with replacement, then ``n`` rows with
  replacement, and averages ``d`` over the drawn seeds and rows (paired: both methods' values
  of a drawn row). The rows are drawn once per resample and shared by its drawn seeds, because
  every seed is evaluated on the same test rows (a crossed design): the row effect does not
  average out over seeds, so drawing rows independently per seed would understate it. With
  one seed it is the row bootstrap of `castlib.stats.rows.paired_difference`, the same numbers.
* `mcnemar_stratified`: the exact McNemar test stratified by seed (the strata are the pairs of
  runs compared, at most one per seed pair, see `castlib.stats.tables`): with ``b_s`` the rows
  where only ``a`` is right and ``c_s`` those where only ``b`` is right in stratum ``s``, under
  H0 (in every stratum a discordant row is as likely to favour either method) and conditional
  on every ``b_s + c_s``, ``B = sum_s b_s ~ Binomial(sum_s (b_s + c_s), 1/2)``; the two-sided
  p-value is ``min(1, 2 P(X <= min(B, C)))``. This is the exact form of the
  Cochran-Mantel-Haenszel test over matched pairs within seeds (each test row of each stratum a
  2x2 table of method x correct), whose statistic is ``(B - C)^2 / (B + C)``
  (``statistic``; the test suite checks it against statsmodels' ``StratifiedTable``). It
  tests whether the methods differ at all; the spread across seeds is the interval's job.
* `seed_verdict`: "resolved" needs the interval to exclude zero *and* the stratified test to
  reject at ``alpha`` (0.05); a comparison resting on one seed says that the fit variance was
  not measured.
* `top_label_share`, `is_collapsed`: the share of rows whose prediction is the method's most
  frequent one, and whether it is above `COLLAPSE_THRESHOLD` (0.9): a collapsed method's
  accuracy is mostly the share of that label among the gold answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .rows import N_BOOT, Interval, _interval

__all__ = [
    "ALPHA",
    "COLLAPSE_THRESHOLD",
    "SeedInterval",
    "StratifiedMcNemar",
    "is_collapsed",
    "mcnemar_stratified",
    "seed_differences",
    "seed_verdict",
    "top_label_share",
    "two_level_interval",
]

#: Level of the stratified test that a resolved difference also needs.
ALPHA = 0.05
#: Most-predicted-label share above which a method counts as collapsed onto one label.
COLLAPSE_THRESHOLD = 0.9
_CHUNK = 1_000  # resamples drawn at once


@dataclass(frozen=True)
class SeedInterval(Interval):
    """A paired difference over ``seeds`` seeds (its interval from `two_level_interval`) and
    the difference of each seed (``per_seed``, in seed order)."""

    seeds: int = 1
    per_seed: tuple[float, ...] = ()


@dataclass(frozen=True)
class StratifiedMcNemar:
    """Exact McNemar test stratified by seed: ``b`` (sum over strata of the rows where only the
    first method is right), ``c`` (only the second), the CMH statistic ``(b - c)^2 / (b + c)``
    (0 when ``b + c = 0``), the exact two-sided p-value and the number of strata."""

    b: int
    c: int
    statistic: float
    p_value: float
    strata: int


def _groups(runs: np.ndarray, seeds: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
    """Distinct seeds (first-seen order) and the mean row of each seed's runs."""
    keys = list(dict.fromkeys(seeds))
    means = np.stack([runs[[i for i, s in enumerate(seeds) if s == k]].mean(0) for k in keys])
    return keys, means


def seed_differences(
    a: np.ndarray,
    b: np.ndarray,
    seeds_a: Sequence[Any] | None = None,
    seeds_b: Sequence[Any] | None = None,
) -> np.ndarray:
    """``[S, n]`` per-seed paired differences of two methods' ``[runs, n]`` correctness.

    Runs with the same seed (a method fitted once per source task) are averaged first. A side
    with one seed is paired with every seed of the other; otherwise the seeds are paired by
    value (both sides must have the same seeds), or in order when the seed values differ but
    their numbers agree. ``seeds_*`` default to ``range(runs)``."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} rows and b {b.shape[1]}: not paired")
    sa = list(seeds_a) if seeds_a is not None else list(range(len(a)))
    sb = list(seeds_b) if seeds_b is not None else list(range(len(b)))
    if len(sa) != len(a) or len(sb) != len(b):
        raise ValueError("seeds_a and seeds_b need one seed per run")
    ka, ma = _groups(a, sa)
    kb, mb = _groups(b, sb)
    if len(kb) == 1:
        return ma - mb[0]
    if len(ka) == 1:
        return ma[0] - mb
    if set(ka) == set(kb):
        return ma - mb[[kb.index(k) for k in ka]]
    if len(ka) == len(kb):
        return ma - mb
    raise ValueError(f"cannot pair seeds {ka} with seeds {kb} (give 1 seed or the same seeds)")


def two_level_interval(
    diffs: np.ndarray, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0
) -> SeedInterval:
    """Mean of ``diffs`` (``[S, n]``: seeds x rows) with the two-level bootstrap interval of the
    module docstring (seeds, then rows shared by the drawn seeds); the row bootstrap when
    ``S = 1``."""
    d = np.atleast_2d(np.asarray(diffs, float))
    n_seeds, n = d.shape
    if n_seeds == 0 or n == 0:
        raise ValueError("two_level_interval needs at least one seed and one row")
    per_seed = tuple(float(x) for x in d.mean(axis=1))
    if n_seeds == 1:
        one = _interval(d[0], n_boot, level, seed)
        return SeedInterval(one.estimate, one.low, one.high, n, level, 1, per_seed)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        drawn = rng.integers(0, n_seeds, size=(size, n_seeds))
        counts = np.zeros((size, n_seeds))
        np.add.at(counts, (np.arange(size)[:, None], drawn), 1.0)
        mean_rows = counts @ d / n_seeds  # [size, n]: each resample's mean over drawn seeds
        rows = rng.integers(0, n, size=(size, n))
        boots[start : start + size] = np.take_along_axis(mean_rows, rows, axis=1).mean(axis=1)
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return SeedInterval(float(d.mean()), float(low), float(high), n, level, n_seeds, per_seed)


def mcnemar_stratified(pairs: Sequence[tuple[Any, Any]]) -> StratifiedMcNemar:
    """Exact McNemar test stratified by seed (module docstring) over ``pairs`` of 0/1
    correctness vectors ``(a_s, b_s)``, one pair per stratum, each on the same rows."""
    if not pairs:
        raise ValueError("mcnemar_stratified needs at least one stratum")
    n_b = n_c = 0
    for xa, xb in pairs:
        xa, xb = np.asarray(xa), np.asarray(xb)
        if xa.ndim != 1 or xa.shape != xb.shape:
            raise ValueError("each stratum needs two 1-D correctness vectors of the same length")
        if not (np.isin(xa, (0, 1)).all() and np.isin(xb, (0, 1)).all()):
            raise ValueError("correctness must be 0/1")
        xa, xb = xa.astype(bool), xb.astype(bool)
        n_b += int((xa & ~xb).sum())
        n_c += int((~xa & xb).sum())
    total = n_b + n_c
    if total == 0:
        return StratifiedMcNemar(0, 0, 0.0, 1.0, len(pairs))
    tail = Fraction(sum(math.comb(total, i) for i in range(min(n_b, n_c) + 1)), 2**total)
    p = float(min(Fraction(1), 2 * tail))
    return StratifiedMcNemar(n_b, n_c, (n_b - n_c) ** 2 / total, p, len(pairs))


def seed_verdict(diff: Interval, p_value: float, seeds: int, alpha: float = ALPHA) -> str:
    """``"resolved"`` where ``diff``'s interval excludes zero and ``p_value < alpha``, else
    ``"not resolved at n = {n}"``; one seed adds ``"; 1 seed: fit variance not measured"``."""
    if diff.low > diff.high:
        raise ValueError(f"interval bounds out of order: ({diff.low}, {diff.high})")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    text = "resolved" if diff.excludes_zero and p_value < alpha else f"not resolved at n = {diff.n}"
    return text + ("; 1 seed: fit variance not measured" if seeds == 1 else "")


def top_label_share(pred: Sequence[Any] | np.ndarray) -> float:
    """Share of the rows whose prediction is the most frequent prediction,
    ``max_y #{r : pred_r = y} / n`` (1.0: one label for every row)."""
    values = np.asarray(pred)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("top_label_share needs a non-empty 1-D sequence of predictions")
    _, counts = np.unique(values, return_counts=True)
    return float(counts.max() / values.size)


def is_collapsed(share: float, threshold: float = COLLAPSE_THRESHOLD) -> bool:
    """True when ``share`` (`top_label_share`) is above ``threshold``."""
    if not 0 < threshold < 1:
        raise ValueError(f"collapse threshold must be in (0, 1), got {threshold}")
    return bool(share > threshold)
