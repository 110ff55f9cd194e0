"""Paired statistics for two models scored on the same items.

``teacher`` and ``student`` are per-item correctness (bools, same order). The gap is
student accuracy minus teacher accuracy (negative: the student is worse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mcnemar_exact(teacher: Sequence[bool], student: Sequence[bool]) -> dict[str, float | int]:
    """Exact (binomial) McNemar test on the discordant pairs.

    b = items only the teacher got right, c = items only the student got right; under the null
    hypothesis (same accuracy) b ~ Binomial(b + c, 1/2). Two-sided p = min(1, 2 P(X <= min(b, c))).
    """
    _check_paired(teacher, student)
    b = sum(1 for t, s in zip(teacher, student, strict=True) if t and not s)
    c = sum(1 for t, s in zip(teacher, student, strict=True) if s and not t)
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "p_value": 1.0}
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"b": b, "c": c, "p_value": min(1.0, 2.0 * tail)}


def bootstrap_gap_ci(
    teacher: Sequence[bool],
    student: Sequence[bool],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of (student accuracy - teacher accuracy), resampling items in pairs."""
    _check_paired(teacher, student)
    n = len(teacher)
    if n == 0:
        return (0.0, 0.0)
    diff = np.asarray(student, dtype=np.float64) - np.asarray(teacher, dtype=np.float64)  # (n,)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))  # (samples, n)
    gaps = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(gaps, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def agreement_rate(teacher: Sequence[bool], student: Sequence[bool]) -> float:
    """Fraction of items where both models are right or both are wrong."""
    _check_paired(teacher, student)
    if not teacher:
        return 0.0
    return sum(1 for t, s in zip(teacher, student, strict=True) if bool(t) == bool(s)) / len(teacher)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation), None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def _check_paired(teacher: Sequence[bool], student: Sequence[bool]) -> None:
    if len(teacher) != len(student):
        raise ValueError(f"paired results differ in length: {len(teacher)} vs {len(student)}")


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely guessing at rate ``p`` scores ``k`` of ``n``."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    # Summed in log space: comb(n, i) overflows a float from n ~ 1030 (all 1338 PIQA rows).
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


NEAR_CHANCE_MARGIN = 0.10


def near_chance(correct: Sequence[bool], chance: float) -> bool:
    """True when the scores are within 10 points of ``chance`` or not significantly above it
    (one-sided exact binomial test, p >= 0.05): such a task cannot show what a student kept."""
    n, k = len(correct), sum(bool(c) for c in correct)
    if n == 0:
        return True
    return k / n < chance + NEAR_CHANCE_MARGIN or binomial_tail(k, n, chance) >= 0.05


# -- intervals and paired tests for one model's scores (the retention report) -----------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``: unlike the normal approximation
    it stays inside [0, 1] and is not zero-width at 0 or n successes, which small cells hit."""
    from scipy.stats import norm

    if n <= 0:
        return (0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-row values (KL, bits per byte): rows are the
    independent units, tokens within a row are not."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return (mean, mean)
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return (mean - half, mean + half)


def paired_t_p(before: Sequence[float], after: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test on per-row values (1.0 when every difference is 0)."""
    from scipy.stats import ttest_rel

    _check_paired(before, after)
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(diff) < 2 or not np.any(diff):
        return 1.0
    if np.all(diff == diff[0]):  # a constant shift: no spread, the t statistic is infinite
        return 0.0
    return float(ttest_rel(after, before).pvalue)
