"""NPS math: classification, counts, NPS, its standard error and small-n confidence intervals.

NPS = 100 (p_P - p_D); passives stay in the denominator. NPS is a difference of two multinomial
proportions, so Var(NPS as a fraction) = (p_P + p_D - (p_P - p_D)^2) / n (Rocks 2016, arXiv:1601.07235).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from processors.memo import BoundedMemo

Z95 = 1.959963984540054


class Loyalty(StrEnum):
    DETRACTOR = "detractor"
    PASSIVE = "passive"
    PROMOTER = "promoter"


def classify(score: int) -> Loyalty:
    """Detractor 0-6, passive 7-8, promoter 9-10."""
    if not 0 <= score <= 10:
        raise ValueError(f"score {score} is outside 0-10")
    if score <= 6:
        return Loyalty.DETRACTOR
    return Loyalty.PASSIVE if score <= 8 else Loyalty.PROMOTER


@dataclass(slots=True)
class NpsCounts:
    """Answer counts by loyalty class; ``add`` and ``merge`` are O(1)."""

    detractors: int = 0
    passives: int = 0
    promoters: int = 0

    def add(self, score: int) -> None:
        if score <= 6:
            self.detractors += 1
        elif score <= 8:
            self.passives += 1
        else:
            self.promoters += 1

    def merge(self, other: NpsCounts) -> None:
        self.detractors += other.detractors
        self.passives += other.passives
        self.promoters += other.promoters

    @property
    def total(self) -> int:
        return self.detractors + self.passives + self.promoters

    @property
    def detractor_share(self) -> float:
        n = self.total
        return self.detractors / n if n else math.nan

    @property
    def nps(self) -> float:
        """NPS in points (-100..100); NaN when there are no answers."""
        n = self.total
        return 100.0 * (self.promoters - self.detractors) / n if n else math.nan

    def standard_error(self) -> float:
        """Standard error of NPS in points (plain multinomial estimate)."""
        return nps_standard_error(self.promoters, self.detractors, self.total)

    def interval(self, z: float = Z95) -> tuple[float, float]:
        """Adjusted-Wald confidence interval of NPS in points; see :func:`nps_interval`."""
        return nps_interval(self.promoters, self.detractors, self.total, z)

    def to_list(self) -> list[int]:
        return [self.detractors, self.passives, self.promoters]

    @classmethod
    def from_list(cls, values: list[int]) -> NpsCounts:
        return cls(values[0], values[1], values[2])

    def summary(self) -> dict[str, Any]:
        """Counts, NPS and its interval (a new dict: the caller may change it; remembered per distinct counts)."""
        key = (self.detractors, self.passives, self.promoters)
        summary = _SUMMARIES.get(key)
        if summary is None:
            low, high = self.interval()
            summary = _SUMMARIES.put(key, {
                "responses": self.total, "detractors": self.detractors, "passives": self.passives,
                "promoters": self.promoters, "nps": _finite(self.nps), "nps_low": _finite(low),
                "nps_high": _finite(high)})
        return summary.copy()


# small counts recur (most windows hold a few answers); 8192 summaries are about 3 MB
_SUMMARIES: BoundedMemo[tuple[int, int, int], dict[str, Any]] = BoundedMemo(8192)


def nps_standard_error(promoters: int, detractors: int, n: int) -> float:
    """SE of NPS in points: 100 sqrt((p_P + p_D - (p_P - p_D)^2) / n); NaN for n = 0."""
    if n <= 0:
        return math.nan
    p_p, p_d = promoters / n, detractors / n
    return 100.0 * math.sqrt(max(0.0, p_p + p_d - (p_p - p_d) ** 2) / n)


def nps_interval(promoters: int, detractors: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Adjusted-Wald interval for NPS in points, clipped to [-100, 100].

    Adds 3 to n and 0.75 to promoters and detractors before the Wald formula: ~95% coverage already at
    n = 10, where the plain Wald interval gives ~90%. For n = 0 it spans the whole range.
    """
    if n <= 0:
        return (-100.0, 100.0)
    n_adj = n + 3.0
    p_p, p_d = (promoters + 0.75) / n_adj, (detractors + 0.75) / n_adj
    centre = p_p - p_d
    half = z * math.sqrt(max(0.0, p_p + p_d - centre**2) / n_adj)
    return (max(-100.0, 100.0 * (centre - half)), min(100.0, 100.0 * (centre + half)))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. the detractor share); (0, 1) for n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (n up to millions is fine)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if k <= n * p:
        # Below the mean the upper-tail terms grow; use the complement, whose terms shrink.
        return max(0.0, 1.0 - binomial_upper_tail(n - k + 1, n, 1.0 - p))
    log_p, log_q = math.log(p), math.log1p(-p)
    log_coeff = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    term = log_coeff + k * log_p + (n - k) * log_q
    # Beyond the mean the terms shrink; sum them relative to the first one for stability.
    total, ratio_log = 1.0, 0.0
    odds = p / (1.0 - p)
    for i in range(k, n):
        ratio_log += math.log((n - i) / (i + 1) * odds)
        step = math.exp(ratio_log)
        total += step
        if step < 1e-17 * total:
            break
    return min(1.0, math.exp(term) * total)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)
