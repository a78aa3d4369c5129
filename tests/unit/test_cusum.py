"""Bernoulli CUSUM (processors.cusum): updates, count-only slices, exact ARL and threshold calibration."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from processors.cusum import (
    BernoulliCusum,
    average_run_length,
    cached_threshold,
    dispersion_factors,
    dispersion_theta,
    fleet_arl0_answers,
    inflate_threshold,
    lattice_for,
    llr_increments,
    threshold_for_arl,
    threshold_lower_bound,
    window_log_mgf,
)

Q0 = 0.25
LN2, LN23 = math.log(2.0), math.log(2.0 / 3.0)  # up and down steps for q0 = 0.25 -> q1 = 0.5


def bresenham(detractors: int, total: int) -> list[bool]:
    return [(k + 1) * detractors // total > k * detractors // total for k in range(total)]


# --- increments and per-answer updates -------------------------------------------------------------------

def test_llr_increments() -> None:
    assert llr_increments(0.25, 0.5) == pytest.approx((LN2, LN23))
    up, down = llr_increments(0.25, 0.35)
    assert up == pytest.approx(math.log(1.4)) and down == pytest.approx(math.log(0.65 / 0.75))


@pytest.mark.parametrize(("q0", "q1", "message"), [
    (0.0, 0.5, "q0"), (1.0, 0.5, "q0"), (0.25, 1.0, "q1"), (0.25, 0.0, "q1"), (0.3, 0.3, "exceed"),
    (0.4, 0.3, "exceed"),
])
def test_llr_increments_validation(q0: float, q1: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llr_increments(q0, q1)


def test_update_arithmetic_by_hand() -> None:
    cusum = BernoulliCusum()
    expected = [  # (answer, S after it, last_zero after it); up = ln 2, down = ln(2/3)
        (True, math.log(2.0), 0), (False, math.log(4 / 3), 0), (False, 0.0, 3),  # ln(8/9) < 0
        (True, math.log(2.0), 3), (True, math.log(4.0), 3), (False, math.log(8 / 3), 3),
        (False, math.log(16 / 9), 3), (False, math.log(32 / 27), 3), (False, 0.0, 9),  # ln(64/81) < 0
        (False, 0.0, 10),
    ]
    for n, (detractor, s, last_zero) in enumerate(expected, start=1):
        assert cusum.update(detractor, 0.25, 0.5) == pytest.approx(s, abs=1e-12)
        assert (cusum.answers, cusum.last_zero) == (n, last_zero)
    assert cusum.s == 0.0


def test_s_never_negative_and_last_zero_is_the_last_zero() -> None:
    rng = random.Random(7)
    cusum, last_zero = BernoulliCusum(), 0
    for n in range(1, 5001):
        q0 = rng.uniform(0.1, 0.4)
        cusum.update(rng.random() < q0, q0, q0 + 0.1)
        assert cusum.s >= 0.0
        if cusum.s == 0.0:
            last_zero = n
        assert cusum.last_zero == last_zero
    assert last_zero > 0


def test_restart_and_json_round_trip() -> None:
    cusum = BernoulliCusum()
    for detractor in (True, True, False, True):
        cusum.update(detractor, 0.25, 0.5)
    cusum.restart(5.0)
    assert (cusum.s, cusum.last_zero, cusum.answers) == (5.0, 4, 4)
    back = BernoulliCusum.from_list(orjson.loads(orjson.dumps(cusum.to_list())))
    assert back == cusum
    with pytest.raises(ValueError, match="restart"):
        cusum.restart(-1.0)


# --- count-only slices ---------------------------------------------------------------------------------------

def test_bresenham_order_spreads_detractors_evenly() -> None:
    assert bresenham(3, 9) == [False, False, True] * 3
    assert bresenham(0, 4) == [False] * 4 and bresenham(4, 4) == [True] * 4
    assert bresenham(2, 5) == [False, False, True, False, True]


@pytest.mark.parametrize(("q0", "q1"), [(0.25, 0.35), (0.25, 0.5), (0.05, 0.15), (0.6, 0.7)])
def test_update_slice_equals_per_answer_updates(q0: float, q1: float) -> None:
    rng = random.Random(11)
    combos = [(d, t) for t in range(0, 13) for d in range(t + 1)]
    combos += [(rng.randint(0, t), t) for t in (rng.randint(13, 400) for _ in range(150))]
    combos += [(0, 500), (500, 500), (1, 500), (499, 500)]
    starts = [0.0, 0.01, 0.5, 2.0, 7.3]
    for d, total in combos:
        for s0 in [*starts, rng.uniform(0.0, 10.0)]:
            answers = rng.randint(0, 10_000)
            fast = BernoulliCusum(s0, rng.randint(0, answers), answers)
            slow = BernoulliCusum(fast.s, fast.last_zero, fast.answers)
            result = fast.update_slice(d, total, q0, q1)
            for detractor in bresenham(d, total) if total else []:
                slow.update(detractor, q0, q1)
            assert result == fast.s
            assert fast.s == pytest.approx(slow.s, rel=1e-12, abs=1e-12), (d, total, s0)
            assert (fast.answers, fast.last_zero) == (slow.answers, slow.last_zero), (d, total, s0)


def test_update_slice_sequences_and_validation() -> None:
    rng = random.Random(3)
    fast, slow = BernoulliCusum(), BernoulliCusum()
    for _ in range(300):
        q0 = rng.uniform(0.15, 0.35)
        total = rng.randint(0, 30)
        d = sum(rng.random() < q0 + 0.05 for _ in range(total))
        fast.update_slice(d, total, q0, q0 + 0.1)
        for detractor in bresenham(d, total) if total else []:
            slow.update(detractor, q0, q0 + 0.1)
        assert fast.s == pytest.approx(slow.s, rel=1e-9, abs=1e-9)
        assert (fast.answers, fast.last_zero) == (slow.answers, slow.last_zero)
    for d, total in ((-1, 3), (4, 3), (0, -1)):
        with pytest.raises(ValueError, match="detractors"):
            BernoulliCusum().update_slice(d, total, 0.25, 0.35)


# --- exact ARL -------------------------------------------------------------------------------------------------

def monte_carlo_arl(h: float, q0: float, q1: float, p: float, start: float, runs: int,
                    rng: random.Random) -> tuple[float, float]:
    """Mean and standard error of the run length (answers to S >= h) of the real, continuous CUSUM."""
    up, down = llr_increments(q0, q1)
    lengths = []
    for _ in range(runs):
        s, n = start, 0
        while s < h:
            n += 1
            s = s + up if rng.random() < p else max(0.0, s + down)
        lengths.append(n)
    mean = sum(lengths) / runs
    var = sum((x - mean) ** 2 for x in lengths) / (runs - 1)
    return mean, math.sqrt(var / runs)


@pytest.mark.parametrize("q1", [0.5, 0.35])
@pytest.mark.parametrize("in_control", [True, False])
def test_markov_chain_arl_matches_monte_carlo(q1: float, in_control: bool) -> None:
    h, p = 3.0, Q0 if in_control else q1
    exact = average_run_length(h, Q0, q1, p)
    mean, se = monte_carlo_arl(h, Q0, q1, p, 0.0, 2000, random.Random(20251124))
    # 4 standard errors (a false failure 1 in ~16000) plus 1% for the lattice (0.2% measured with 2e5 runs)
    assert abs(exact - mean) <= 4 * se + 0.01 * exact, (exact, mean, se)


def test_markov_chain_arl_with_head_start_matches_monte_carlo() -> None:
    h = 3.0
    exact = average_run_length(h, Q0, 0.5, 0.5, start=h / 2)
    mean, se = monte_carlo_arl(h, Q0, 0.5, 0.5, h / 2, 2000, random.Random(5))
    assert abs(exact - mean) <= 4 * se + 0.01 * exact, (exact, mean, se)


def test_lattice_keeps_the_step_ratio() -> None:
    # q0 = 0.25 -> 0.35: steps 0.3365 and 0.1431. The chosen lattice keeps their ratio to < 5e-4, where
    # rounding both on m = 400 (134.6 -> 135, 57.2 -> 57) makes the in-control drift less negative and
    # ARL0 ~5% low at h = 3 and ~27% low at h = 12 (thresholds ~0.3 too high).
    up, down = llr_increments(Q0, 0.35)
    for q0, q1 in ((Q0, 0.35), (Q0, 0.5), (0.287, 0.387), (0.005, 0.105), (0.615, 0.715), (0.742, 0.99)):
        a, b, m = lattice_for(q0, q1)
        u, d = llr_increments(q0, q1)
        assert a / m == pytest.approx(u, rel=1e-12)
        assert b / m == pytest.approx(-d, rel=2e-3)
        assert math.gcd(a, b) == 1 and m >= 1
    a, b, m = lattice_for(Q0, 0.35)
    assert abs(b / m + down) / -down < 5e-4 and m >= 60
    for h, low, high in ((3.0, 0.92, 0.97), (12.0, 0.68, 0.78)):
        ratio = average_run_length(h, Q0, 0.35, Q0, m=400) / average_run_length(h, Q0, 0.35, Q0)
        assert low < ratio < high, (h, ratio)
    assert up > 0


def test_arl_orderings() -> None:
    h = threshold_for_arl(1e5, Q0, 0.35)
    in_control = average_run_length(h, Q0, 0.35, Q0)
    out_of_control = average_run_length(h, Q0, 0.35, 0.35)
    head_start = average_run_length(h, Q0, 0.35, 0.35, start=h / 2)
    assert out_of_control < in_control / 100
    assert head_start < out_of_control
    assert average_run_length(h, Q0, 0.35, 0.5) < out_of_control  # a bigger spike is caught sooner
    assert average_run_length(h + 1.0, Q0, 0.35, Q0) > in_control


def test_arl_trivial_cases_and_validation() -> None:
    # p = 1: every answer climbs ceil(h m / a) lattice steps at most; 0.25 -> 0.5 climbs ln 2 per answer.
    assert average_run_length(2.0, 0.25, 0.5, 1.0) == pytest.approx(3.0)
    assert average_run_length(0.5, 0.25, 0.5, 0.3) == pytest.approx(1 / 0.3)  # one detractor alarms
    for kwargs, message in (({"h": 0.0}, "threshold"), ({"p": 0.0}, "share"), ({"start": 3.0}, "start"),
                            ({"m": 0}, "m=0"), ({"m": 1}, "coarse")):
        args = {"h": 3.0, "q0": 0.25, "q1": 0.35, "p": 0.25, **kwargs}
        start, m = args.pop("start", 0.0), args.pop("m", 400)
        with pytest.raises(ValueError, match=message):
            average_run_length(**args, start=start, m=m)


# --- thresholds --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "q0", "q1"), [(500.0, 0.25, 0.35), (1e5, 0.1, 0.2), (3e6, 0.3, 0.55),
                                                  (5.0, 0.4, 0.45)])
def test_threshold_is_the_smallest_reaching_the_target(target: float, q0: float, q1: float) -> None:
    h = threshold_for_arl(target, q0, q1)
    step = 1 / lattice_for(q0, q1)[2]
    assert average_run_length(h, q0, q1, q0) >= target
    assert h - step <= 0 or average_run_length(h - step, q0, q1, q0) < target
    coarse = threshold_for_arl(target, q0, q1, tol=0.02)
    assert average_run_length(coarse, q0, q1, q0) >= target
    assert coarse - 0.02 <= 0 or average_run_length(coarse - 0.02, q0, q1, q0) < target


def test_threshold_validation() -> None:
    for target in (0.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="ARL0"):
            threshold_for_arl(target, 0.25, 0.35)
    with pytest.raises(ValueError, match="tolerance"):
        threshold_for_arl(1e4, 0.25, 0.35, tol=0.0)


# Facts file, N = 1000 segments, F = 1 false alert per day, two CUSUMs per segment, r = 2 / 10 / 50.
FACTS = {0.10: (10.0, 11.6, 13.3), 0.25: (11.5, 13.1, 14.7)}


@pytest.mark.parametrize("shift", [0.10, 0.25])
def test_fleet_thresholds_match_the_facts(shift: float) -> None:
    for r, quoted in zip((2, 10, 50), FACTS[shift], strict=True):
        target = fleet_arl0_answers(r, 1000, 1.0)
        h = threshold_for_arl(target, Q0, Q0 + shift)
        assert h == pytest.approx(quoted, abs=0.1)
        if shift == 0.10:  # m = 400 rounds the +10 pp steps off their ratio: h 0.26-0.31 too high
            assert quoted + 0.2 < threshold_for_arl(target, Q0, Q0 + shift, m=400) < quoted + 0.35


def test_cached_threshold_rounds_onto_a_grid_without_exceeding_the_budget() -> None:
    target = fleet_arl0_answers(10, 1000, 1.0)
    h = cached_threshold(target, 0.2503, 0.3501)
    assert h >= threshold_for_arl(target, 0.25, 0.35)  # ARL0 rounded up, never down
    assert average_run_length(h, 0.25, 0.35, 0.25) >= target
    grid = 2.0 ** (math.ceil(16 * math.log2(target)) / 16)
    assert target <= grid < target * 2 ** (1 / 16)
    assert h == threshold_for_arl(grid, 0.25, 0.35)
    assert cached_threshold(target * 1.001, 0.2499, 0.35) == h  # the same grid cell
    assert cached_threshold(grid, 0.25, 0.35) == h  # a target on the grid stays there
    with pytest.raises(ValueError, match="exceed"):
        cached_threshold(1e4, 0.2501, 0.2504)  # both round to 0.250


# --- fleet calibration ----------------------------------------------------------------------------------------

def test_fleet_arl0_answers() -> None:
    assert fleet_arl0_answers(10, 1000, 1.0) == 2 * 10 * 1000 * 288 == 5_760_000
    assert fleet_arl0_answers(2, 1000, 1.0, cusums_per_segment=1) == 576_000
    assert fleet_arl0_answers(10, 500, 4.0, windows_per_day=96) == pytest.approx(2 * 10 * 500 * 96 / 4)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((0, 10, 1.0), {}, "answers per window"), ((5, 0, 1.0), {}, "segment"), ((5, 10, 0.0), {}, "budget"),
    ((5, 10, 1.0), {"windows_per_day": 0}, "windows"), ((5, 10, 1.0), {"cusums_per_segment": 0}, "CUSUMs"),
])
def test_fleet_arl0_answers_validation(args: tuple[float, int, float], kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fleet_arl0_answers(*args, **kwargs)


def test_threshold_lower_bound_holds_on_a_wide_grid() -> None:
    rng = random.Random(11)
    cells = [(0.005, 0.105, 50.0), (0.012, 0.262, 56.2), (0.95, 0.99, 1e6), (0.5, 0.75, 4.0)]
    for _ in range(150):
        q0 = round(rng.choice([rng.uniform(0.005, 0.08), rng.uniform(0.005, 0.94)]), 3)
        cells.append((q0, min(q0 + rng.choice([0.10, 0.25]), 0.99), 2 ** rng.uniform(2, 32)))
    for q0, q1, target in cells:
        h = cached_threshold(target, q0, q1)
        bound = threshold_lower_bound(target, q0, q1)
        assert bound == 0.0 or bound <= h - 0.4, (q0, q1, target, h, bound)  # with room to spare


# --- window-level overdispersion ---------------------------------------------------------------------------

def _beta_poisson_log_mgf(theta: float, q0: float, q1: float, r: float, rho: float) -> float:
    """ln E[exp(theta Y)] by quadrature over the window's Beta share (the definition, no Kummer function)."""
    import numpy as np
    from scipy import integrate, stats

    up, down = llr_increments(q0, q1)
    kappa = 1.0 / rho - 1.0
    beta = stats.beta(q0 * kappa, (1.0 - q0) * kappa)

    def integrand(p: float) -> float:
        return float(np.exp(r * (p * math.exp(theta * up) + (1.0 - p) * math.exp(theta * down) - 1.0)) * beta.pdf(p))

    value, _ = integrate.quad(integrand, 0.0, 1.0, points=[q0], limit=200)
    return math.log(value)


@pytest.mark.parametrize(("theta", "r", "rho"), [(1.0, 50.0, 1 / 201), (0.7, 10.0, 0.02), (0.9, 200.0, 0.001)])
def test_window_log_mgf_matches_quadrature(theta: float, r: float, rho: float) -> None:
    assert window_log_mgf(theta, 0.25, 0.35, r, rho) == pytest.approx(
        _beta_poisson_log_mgf(theta, 0.25, 0.35, r, rho), rel=1e-7, abs=1e-10)


def test_dispersion_theta_is_one_without_dispersion_and_falls_with_traffic_and_rho() -> None:
    assert window_log_mgf(1.0, 0.25, 0.35, 50.0, 0.0) == pytest.approx(0.0, abs=1e-12)  # E[LR] = 1 per answer
    assert dispersion_theta(0.25, 0.35, 50.0, 0.0) == 1.0
    thetas = [dispersion_theta(0.25, 0.35, r, 1 / 201) for r in (2.0, 10.0, 50.0)]
    assert thetas == pytest.approx([0.98939, 0.94912, 0.78865], abs=1e-5)
    assert window_log_mgf(thetas[2], 0.25, 0.35, 50.0, 1 / 201) == pytest.approx(0.0, abs=1e-9)
    assert dispersion_theta(0.25, 0.35, 50.0, 0.02) < thetas[2]
    assert dispersion_factors(0.25, 0.35, 50.0, 0.0) is None
    theta, offset = dispersion_factors(0.25, 0.35, 50.0, 1 / 201)  # r and rho rounded up: a lower theta
    assert theta < thetas[2] and offset < math.log(theta) < 0.0  # the chains correct Siegmund's ln theta down
    assert inflate_threshold(10.0, 1.0, 0.0) == 10.0
    assert inflate_threshold(10.0, 0.8, -0.5) == pytest.approx((10.0 - 0.5) / 0.8)
    assert inflate_threshold(0.1, 0.8, -0.5) == 0.1  # never below the independent-answer threshold


def test_dispersion_theta_holds_for_thousands_of_answers_per_window() -> None:
    # Kummer's function underflows for r in the thousands at small rho: the log-space fallback takes over.
    thetas = [dispersion_theta(0.25, 0.35, r, 1e-3) for r in (1000.0, 2000.0, 5000.0, 20000.0)]
    assert all(0.0 < t < 1.0 for t in thetas) and thetas == sorted(thetas, reverse=True)
    assert window_log_mgf(thetas[2], 0.25, 0.35, 5000.0, 1e-3) == pytest.approx(0.0, abs=1e-7)
    # where both work, the fallback equals Kummer's function: ln E[e^(t p)] = t + ln 1F1(b; a + b; -t)
    from scipy.special import hyp1f1

    from processors.cusum import _log_beta_mgf

    for t, a, b in ((300.0, 50.0, 150.0), (-200.0, 1000.0, 3000.0), (5.0, 2.0, 6.0)):
        assert _log_beta_mgf(t, a, b) == pytest.approx(t + math.log(hyp1f1(b, a + b, -t)), rel=1e-6)
