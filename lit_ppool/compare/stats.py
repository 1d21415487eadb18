"""Statistics of a comparison over seeds: mean and spread, and the paired difference with its t-interval."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "Summary", "paired_difference", "student_t_quantile", "summarize"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (``ddof=1``; ``nan`` below 2 values) of ``n`` values."""

    n: int
    mean: float
    std: float


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences ``b - a`` and its 95% t-interval (``nan`` bounds below 2 pairs)."""

    n: int
    mean: float
    low: float
    high: float

    @property
    def interval_known(self) -> bool:
        """Whether there were at least 2 pairs (else the interval is "n too small")."""
        return self.n >= 2

    @property
    def excludes_zero(self) -> bool:
        """Whether the 95% interval lies entirely above or below 0."""
        return self.interval_known and (self.low > 0 or self.high < 0)


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation.

    Example:
        >>> s = summarize([0.5, 0.7])
        >>> s.n, round(s.mean, 6), round(s.std, 6)
        (2, 0.6, 0.141421)
    """
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, math.nan)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else math.nan
    return Summary(n, mean, std)


def _t_density(t: float, dof: int) -> float:
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))


def _t_cdf_above_zero(x: float, dof: int, intervals: int = 4000) -> float:
    """P(0 <= T <= x) by Simpson's rule on the density (smooth and bounded: accurate to ~1e-10)."""
    h = x / intervals
    total = _t_density(0.0, dof) + _t_density(x, dof)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, dof) for i in range(1, intervals))
    return total * h / 3


@functools.cache
def student_t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t distribution with ``dof`` degrees of freedom.

    Bisection on the distribution function, itself integrated from the density.

    Example:
        >>> round(student_t_quantile(0.975, 2), 3)
        4.303
    """
    if not 0.5 < probability < 1 or dof < 1:
        raise ValueError(f"Expected a probability in (0.5, 1) and dof >= 1, but got {probability!r} and {dof!r}.")
    target = probability - 0.5
    low, high = 0.0, 1.0
    while _t_cdf_above_zero(high, dof) < target:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf_above_zero(middle, dof) < target else (low, middle)
    return (low + high) / 2


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> PairedDifference:
    """Mean of ``b[seed] - a[seed]`` over the seeds both have, with a two-sided t-interval.

    Args:
        a: Seed -> metric of the reference pooling.
        b: Seed -> metric of the compared pooling.
        confidence: Coverage of the interval.

    Example:
        >>> d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.6, 1: 0.6, 2: 0.8})
        >>> round(d.mean, 4), round(d.low, 4), round(d.high, 4)
        (0.0667, -0.0768, 0.2101)
    """
    seeds = sorted(a.keys() & b.keys())
    differences = [b[seed] - a[seed] for seed in seeds]
    summary = summarize(differences)
    if summary.n < 2:
        return PairedDifference(summary.n, summary.mean, math.nan, math.nan)
    half = student_t_quantile(0.5 + confidence / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return PairedDifference(summary.n, summary.mean, summary.mean - half, summary.mean + half)
