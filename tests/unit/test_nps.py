"""NPS math (processors.nps) against hand-computed values and exact sums."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from processors.nps import (
    Z95,
    Loyalty,
    NpsCounts,
    binomial_upper_tail,
    classify,
    nps_interval,
    nps_standard_error,
    wilson_interval,
)


@pytest.mark.parametrize(("score", "loyalty"), [
    (0, Loyalty.DETRACTOR), (6, Loyalty.DETRACTOR), (7, Loyalty.PASSIVE), (8, Loyalty.PASSIVE),
    (9, Loyalty.PROMOTER), (10, Loyalty.PROMOTER),
])
def test_classify_boundaries(score: int, loyalty: Loyalty) -> None:
    assert classify(score) is loyalty


@pytest.mark.parametrize("score", [11, -1])
def test_classify_refuses_out_of_range(score: int) -> None:
    with pytest.raises(ValueError, match="outside 0-10"):
        classify(score)


def counts_of(promoters: int, passives: int, detractors: int) -> NpsCounts:
    counts = NpsCounts()
    for score in [10] * promoters + [7] * passives + [3] * detractors:
        counts.add(score)
    return counts


def test_counts_add_uses_the_same_classes_as_classify() -> None:
    counts = NpsCounts()
    for score in range(11):
        counts.add(score)
    assert counts.to_list() == [7, 2, 2]
    assert counts.total == 11


def test_nps_hand_computed() -> None:
    counts = counts_of(promoters=5, passives=3, detractors=2)
    assert counts.total == 10
    assert counts.nps == pytest.approx(30.0)
    assert counts.detractor_share == pytest.approx(0.2)


def test_passives_stay_in_the_denominator() -> None:
    assert counts_of(promoters=1, passives=8, detractors=1).nps == 0.0
    assert counts_of(promoters=2, passives=2, detractors=0).nps == pytest.approx(50.0)


def test_empty_counts_are_nan_and_summarise_as_none() -> None:
    counts = NpsCounts()
    assert math.isnan(counts.nps)
    assert math.isnan(counts.detractor_share)
    assert math.isnan(counts.standard_error())
    summary = counts.summary()
    assert summary["nps"] is None
    assert summary["nps_low"] == -100.0
    assert summary["nps_high"] == 100.0


def test_merge_and_list_round_trip() -> None:
    left, right = counts_of(5, 3, 2), counts_of(1, 0, 4)
    left.merge(right)
    assert left.to_list() == [6, 3, 6]
    assert NpsCounts.from_list(left.to_list()) == left


def test_standard_error_hand_computed() -> None:
    # p_P = 0.5, p_D = 0.2, n = 10: Var = (0.5 + 0.2 - 0.3^2) / 10 = 0.061.
    assert counts_of(5, 3, 2).standard_error() == pytest.approx(100 * math.sqrt(0.061))
    assert nps_standard_error(5, 2, 10) == pytest.approx(24.698178, abs=1e-5)


def test_standard_error_worst_case_and_degenerate() -> None:
    # Half promoters, half detractors: Var = 1, SE = 100 / sqrt(n).
    assert nps_standard_error(50, 50, 100) == pytest.approx(10.0)
    # All promoters: no sampling variation.
    assert nps_standard_error(20, 0, 20) == 0.0
    assert math.isnan(nps_standard_error(0, 0, 0))


def test_adjusted_wald_interval_hand_computed() -> None:
    # n = 10, 5 promoters, 2 detractors -> n' = 13, p_P = 5.75/13, p_D = 2.75/13, centre = 3/13,
    # Var = (8.5/13 - (3/13)^2) / 13 = 0.0461994..., half-width = 1.96 * 0.2149404... = 0.4212754...
    low, high = nps_interval(5, 2, 10)
    assert low == pytest.approx(-19.0506, abs=1e-3)
    assert high == pytest.approx(65.2045, abs=1e-3)
    assert counts_of(5, 3, 2).interval() == (low, high)


def test_adjusted_wald_interval_is_clipped() -> None:
    # 10 promoters of 10: centre 10/13, half-width 0.294197 -> upper 106.3 clipped to 100.
    low, high = nps_interval(10, 0, 10)
    assert high == 100.0
    assert low == pytest.approx(47.5036, abs=1e-3)
    low, high = nps_interval(0, 10, 10)
    assert (low, high) == (-100.0, pytest.approx(-47.5036, abs=1e-3))


def test_adjusted_wald_interval_for_no_answers_spans_everything() -> None:
    assert nps_interval(0, 0, 0) == (-100.0, 100.0)


def test_wilson_interval_three_of_ten() -> None:
    # p = 0.3, z = 1.96: centre (0.3 + z^2/20) / (1 + z^2/10) = 0.355511, half-width 0.247599.
    low, high = wilson_interval(3, 10)
    assert low == pytest.approx(0.10779, abs=1e-4)
    assert high == pytest.approx(0.60322, abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(Z95**2 / (10 + Z95**2), rel=1e-9)  # closed form for zero successes
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(10 / (10 + Z95**2), rel=1e-9)


def exact_upper_tail(k: int, n: int, p: Fraction) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly in rational arithmetic."""
    if k <= 0:
        return 1.0
    num, den = p.numerator, p.denominator
    total = sum(math.comb(n, i) * num**i * (den - num) ** (n - i) for i in range(k, n + 1))
    return float(Fraction(total, den**n))


@pytest.mark.parametrize(("k", "n", "p"), [
    (3, 10, Fraction(1, 4)),
    (2, 10, Fraction(1, 4)),      # below the mean: complement branch
    (1, 10, Fraction(1, 10)),     # k at the mean
    (10, 10, Fraction(1, 10)),
    (5, 5, Fraction(1, 2)),
    (7, 20, Fraction(1, 5)),
    (14, 20, Fraction(1, 5)),
    (60, 100, Fraction(1, 5)),    # ~1e-18: relative precision in the far tail
    (30, 50, Fraction(1, 4)),
    (1000, 4000, Fraction(1, 4)),  # exactly at the mean
    (900, 4000, Fraction(1, 4)),
    (1100, 4000, Fraction(1, 4)),
    (1200, 4000, Fraction(1, 4)),
    (2, 4000, Fraction(1, 1000)),
])
def test_binomial_upper_tail_matches_exact_sum(k: int, n: int, p: Fraction) -> None:
    assert binomial_upper_tail(k, n, float(p)) == pytest.approx(exact_upper_tail(k, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("k", "n", "p", "expected"), [
    (0, 10, 0.3, 1.0), (-2, 10, 0.3, 1.0), (11, 10, 0.3, 0.0), (1, 10, 0.0, 0.0), (10, 10, 1.0, 1.0),
])
def test_binomial_upper_tail_edges(k: int, n: int, p: float, expected: float) -> None:
    assert binomial_upper_tail(k, n, p) == expected


def test_binomial_upper_tail_large_n_is_consistent_and_near_normal() -> None:
    n, p = 1_000_000, 0.25
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    k = round(mean + 3 * sd)
    upper = binomial_upper_tail(k, n, p)
    lower_complement = binomial_upper_tail(n - k + 1, n, 1 - p)  # P(X <= k - 1)
    assert upper + lower_complement == pytest.approx(1.0, abs=1e-9)
    # Normal approximation with continuity correction; the binomial's skew keeps it within a few percent.
    normal = 0.5 * math.erfc(((k - 0.5) - mean) / sd / math.sqrt(2))
    assert upper == pytest.approx(normal, rel=0.05)
    assert binomial_upper_tail(k + 1, n, p) < upper


def test_binomial_upper_tail_decreases_in_k() -> None:
    tails = [binomial_upper_tail(k, 50, 0.3) for k in range(52)]
    assert all(a >= b for a, b in itertools.pairwise(tails))
    assert tails[0] == 1.0
    assert tails[51] == 0.0


@pytest.mark.parametrize(("p_promoter", "p_detractor"), [(0.5, 0.2), (0.3, 0.3), (0.7, 0.1), (0.2, 0.6)])
def test_adjusted_wald_covers_true_nps_at_n_10(p_promoter: float, p_detractor: float) -> None:
    rng = random.Random(20251124)
    true_nps = 100 * (p_promoter - p_detractor)
    samples, covered = 4000, 0
    for _ in range(samples):
        promoters = detractors = 0
        for _ in range(10):
            u = rng.random()
            if u < p_promoter:
                promoters += 1
            elif u < p_promoter + p_detractor:
                detractors += 1
        low, high = nps_interval(promoters, detractors, 10)
        covered += low <= true_nps <= high
    assert covered / samples >= 0.92
