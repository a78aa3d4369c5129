"""Bernoulli CUSUM for detractor spikes: per-answer updates, exact ARL and threshold calibration.

Each answer x (1 for a detractor) adds its log-likelihood ratio for the design shift q0 -> q1:
S <- max(0, S + x ln(q1/q0) + (1 - x) ln((1 - q1)/(1 - q0))); the segment alarms when S >= h. The
baseline q0 changes by hour, so it is an argument of every update, not state.

The average run length (ARL, in answers) for threshold h and true detractor share p comes from a Markov
chain on a lattice of S with step 1/m (Brook & Evans 1972), solved as a banded linear system.
:func:`threshold_for_arl` inverts it; :func:`fleet_arl0_answers` turns a fleet-wide budget of false alerts
per day into the in-control ARL each CUSUM needs (union bound, valid under any dependence).
Pure computation: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.linalg import lapack
from scipy.optimize import brentq
from scipy.special import hyp1f1

_dgbsv = lapack.dgbsv


def llr_increments(q0: float, q1: float) -> tuple[float, float]:
    """(up, down) = (ln(q1/q0), ln((1-q1)/(1-q0))): the CUSUM step for a detractor and for any other answer."""
    if not 0.0 < q0 < 1.0:
        raise ValueError(f"baseline share q0={q0} must be in (0, 1)")
    if not 0.0 < q1 < 1.0:
        raise ValueError(f"design share q1={q1} must be in (0, 1)")
    if q1 <= q0:
        raise ValueError(f"design share q1={q1} must exceed baseline share q0={q0}")
    return math.log(q1 / q0), math.log((1.0 - q1) / (1.0 - q0))


@dataclass(slots=True)
class BernoulliCusum:
    """Upper Bernoulli CUSUM state: S, the answer count at which S was last 0, and answers seen.

    ``last_zero`` is the value of ``answers`` after the last update that left S at 0, so the onset estimate
    of an alarm is answer number ``last_zero + 1`` (the first answer after the last zero, 1-based).
    """

    s: float = 0.0
    last_zero: int = 0
    answers: int = 0

    def update(self, detractor: bool, q0: float, q1: float) -> float:
        """Apply one answer and return the new S."""
        up, down = llr_increments(q0, q1)
        self.answers += 1
        s = self.s + (up if detractor else down)
        if s <= 0.0:
            s = 0.0
            self.last_zero = self.answers
        self.s = s
        return s

    def update_slice(self, detractors: int, total: int, q0: float, q1: float) -> float:
        """Apply the ``total`` answers of one time slice, ``detractors`` of them detractors; return the new S.

        The pipeline only has per-minute counts per segment, not the order of the answers, so the slice is
        fed in a canonical order that depends only on the counts: detractors spread evenly (Bresenham), the
        k-th answer (k = 0..total-1) being a detractor iff floor((k+1) d / total) > floor(k d / total). A
        count-only order keeps the embedded runner and the worker bit-identical. The result equals calling
        :meth:`update` per answer in that order (up to float rounding), in O(detractors): each run of
        non-detractors is applied at once as S = max(0, S + run * down); S only falls inside a run, so it
        hits 0 in the run iff it is <= 0 at the run's end, and then it stays 0 to that end.
        """
        if total < 0 or not 0 <= detractors <= total:
            raise ValueError(f"need 0 <= detractors <= total, got {detractors} of {total}")
        up, down = llr_increments(q0, q1)
        s, base, last_zero = self.s, self.answers, self.last_zero
        prev = -1  # index of the previous detractor in the slice
        for j in range(1, detractors + 1):
            k = -(-j * total // detractors) - 1  # j-th detractor: smallest k with (k + 1) d >= j total
            run = k - prev - 1
            if run:
                s += run * down
                if s <= 0.0:
                    s, last_zero = 0.0, base + k
            s += up
            prev = k
        run = total - prev - 1
        if run:
            s += run * down
            if s <= 0.0:
                s, last_zero = 0.0, base + total
        self.s, self.answers, self.last_zero = s, base + total, last_zero
        return s

    def restart(self, s0: float) -> None:
        """Set S to ``s0``, e.g. h/2 after an alert resolves (fast initial response, Lucas & Crosier 1982).

        ``last_zero`` moves to the restart too, so a later alarm's onset estimate is never before it.
        """
        if not s0 >= 0.0:
            raise ValueError(f"CUSUM restart value {s0} must be >= 0")
        self.s = float(s0)
        self.last_zero = self.answers

    def to_list(self) -> list[Any]:
        return [self.s, self.last_zero, self.answers]

    @classmethod
    def from_list(cls, data: list[Any]) -> BernoulliCusum:
        return cls(float(data[0]), int(data[1]), int(data[2]))


LATTICE_MAX_STEP = 250
LATTICE_MIN_M = 60.0
LATTICE_MAX_M = 600.0
LATTICE_RATIO_TOLERANCE = 5e-4


@lru_cache(maxsize=65536)
def lattice_for(q0: float, q1: float) -> tuple[int, int, float]:
    """The lattice (a, b, m) on which the CUSUM for q0 -> q1 is (nearly) exact: S = i/m, up a, down b states.

    A detractor moves S up by ln(q1/q0) = a/m exactly; any other answer moves it down by b/m, which equals
    |ln((1-q1)/(1-q0))| to a relative error below 5e-4 where possible (the first rational approximation b/a
    of the step ratio that good with m >= 60, i.e. h resolved to 1/60 or finer; else the best with a, b
    <= 250 and m <= 600, which keeps a solve under ~20 ms; coprime). Over random (q0, q0 + 10 or 25 pp) the
    error is 3e-4 at the median, 5e-4 at p90 and 4e-3 at worst. The chain is then the real CUSUM up to that
    error (ln ARL0 off by ~0.03 at h = 12 for 5e-4),
    which matters: rounding both steps on a fixed m = 400 moves their ratio by ~0.6% at q0 = 0.25,
    q1 = 0.35 and ARL0 by ~30% at h = 12. Small steps also keep the banded solve fast (H ~ h m states,
    bandwidths a and b).
    """
    up, down = llr_increments(q0, q1)
    down = -down
    best: tuple[float, int, int] | None = None
    for a in range(1, LATTICE_MAX_STEP + 1):
        m = a / up
        if m > LATTICE_MAX_M and best is not None:
            break
        b = round(down * m)
        if b < 1:
            continue
        if b > LATTICE_MAX_STEP:
            break
        error = abs(b - down * m) / (down * m)
        if best is None or error < best[0]:
            best = (error, a, b)
        if best[0] < LATTICE_RATIO_TOLERANCE and m >= LATTICE_MIN_M:
            break
    if best is None:  # the down step is below 1/400 of the up step: q0 and q1 both tiny
        raise ValueError(f"CUSUM steps for q0={q0}, q1={q1} are too unequal for the lattice")
    _, a, b = best
    g = math.gcd(a, b)
    a, b = a // g, b // g
    return a, b, a / up


def _lattice_steps(q0: float, q1: float, m: float | None) -> tuple[int, int, float]:
    """(a, b, m): :func:`lattice_for` when m is None, else both steps rounded on the given resolution m."""
    if m is None:
        return lattice_for(q0, q1)
    if m < 1:
        raise ValueError(f"lattice resolution m={m} must be >= 1")
    up, down = llr_increments(q0, q1)
    a, b = round(up * m), round(-down * m)
    if a < 1:
        raise ValueError(f"lattice resolution m={m} is too coarse for the up step {up:.4g}")
    return a, b, m


def _lattice_arl(big_h: int, a: int, b: int, p: float) -> np.ndarray:
    """ARL from every transient state 0..H-1 of the lattice chain: the solution of (I - Q) x = 1.

    Calls LAPACK's banded solver dgbsv, as ``scipy.linalg.solve_banded`` does, but builds its band storage
    (``b`` extra rows on top for the pivoting fill-in) directly, saving solve_banded's copy: ~40% faster.
    """
    # Band storage: ab[b + a + i - j, j] = A[i, j]; rows 0..b-1 are workspace for dgbsv.
    ab = np.zeros((2 * b + a + 1, big_h), order="F")
    diag = b + a
    ab[diag, :] = 1.0
    ab[b, a:] = -p  # up: i -> i + a; beyond H-1 it is absorbed
    if b:
        ab[diag + b, : max(0, big_h - b)] = -(1.0 - p)  # down: i -> i - b for i >= b
        ab[diag + 1 : diag + min(b, big_h), 0] = -(1.0 - p)  # reflected: i -> 0 for 0 < i < b
        ab[diag, 0] = p  # state 0 stays at 0 with probability 1 - p
    else:
        ab[diag, :] = p  # down steps round to 0: self-loops
    _, _, x, info = _dgbsv(b, a, ab, np.ones(big_h), overwrite_ab=1, overwrite_b=1)
    if info != 0:
        raise ArithmeticError(f"banded ARL system is singular (LAPACK dgbsv info={info})")
    return x


def average_run_length(h: float, q0: float, q1: float, p: float, *, start: float = 0.0,
                       m: float | None = None) -> float:
    """Mean answers to alarm of an upper CUSUM (threshold h, design q0 -> q1) when the detractor share is p.

    Markov chain on the lattice S = i/m (Brook & Evans 1972; :func:`lattice_for`, or steps rounded on a
    given m): transient states 0..H-1 with H = ceil(h m); from state i the chain moves up a states with
    probability p (absorbed at >= H), else to max(0, i - b). The ARL from S = ``start`` is entry
    round(start m) of (I - Q)^-1 1; I - Q is banded, so it is solved in O(H a b) without a dense matrix.
    """
    if not h > 0.0:
        raise ValueError(f"threshold h={h} must be > 0")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"detractor share p={p} must be in (0, 1]")
    a, b, m = _lattice_steps(q0, q1, m)
    big_h = math.ceil(h * m - 1e-9)
    i0 = round(start * m)
    if not 0 <= i0 < big_h:
        raise ValueError(f"start={start} must be in [0, h={h})")
    return float(_lattice_arl(big_h, a, b, p)[i0])


def _in_control_theta(a: int, b: int, q0: float, m: float) -> float:
    """Root theta > 0 of q0 e^(theta a/m) + (1 - q0) e^(-theta b/m) = 1: the slope of ln ARL0 in h on the lattice.

    It is exactly 1 for the continuous LLR increments; rounding them to the lattice moves it a little.
    """
    def f(t: float) -> tuple[float, float]:
        eu, ed = math.exp(t * a / m), math.exp(-t * b / m)
        return q0 * eu + (1.0 - q0) * ed - 1.0, (q0 * a * eu - (1.0 - q0) * b * ed) / m

    if q0 * a >= (1.0 - q0) * b:  # no negative drift in control: no positive root
        return 1.0
    theta = 1.0
    while f(theta)[0] <= 0.0:  # start right of the root: Newton then converges monotonically (f is convex)
        theta *= 2.0
    for _ in range(100):
        value, slope = f(theta)
        step = value / slope
        theta -= step
        if step < 1e-12 * theta:
            break
    return theta


def threshold_for_arl(arl0_answers: float, q0: float, q1: float, *, m: float | None = None,
                      tol: float = 1e-3) -> float:
    """The smallest threshold h whose in-control ARL (p = q0, start 0) is at least ``arl0_answers``.

    The lattice ARL depends on h only through H = ceil(h m) and grows with H, so the answer is a lattice
    point h = H/m with ARL(h) >= target > ARL(h - 1/m); a ``tol`` above 1/m stops the search earlier, with
    ARL(h - tol) < target. Each ARL is a banded solve (~1-10 ms at h ~ 12), so the bracketing is steered:
    ln ARL0 is nearly linear in h with slope theta (the positive root of E[e^(theta X)] = 1 for the lattice
    increments, ~1), so from the facts' shortcut h ~ ln(ARL0 KL(q0||q1)) - 0.17 secant steps that overshoot
    the root slightly bracket it within a few lattice steps, and bisection finishes: ~5 solves.
    """
    if not arl0_answers >= 1.0 or not math.isfinite(arl0_answers):
        raise ValueError(f"target ARL0 {arl0_answers} must be a finite number of answers >= 1")
    if not tol > 0.0:
        raise ValueError(f"tolerance {tol} must be > 0")
    a, b, m = _lattice_steps(q0, q1, m)
    target = math.log(arl0_answers)
    step = max(1, math.floor(tol * m + 1e-9))
    theta = _in_control_theta(a, b, q0, m)
    cache: dict[int, float] = {0: -math.inf}

    def g(big_h: int) -> float:
        if big_h not in cache:
            cache[big_h] = math.log(float(_lattice_arl(big_h, a, b, q0)[0])) - target
        return cache[big_h]

    kl = q0 * math.log(q0 / q1) + (1.0 - q0) * math.log((1.0 - q0) / (1.0 - q1))
    x = max(1, round((math.log(max(arl0_answers * kl, 1.0)) - 0.17) * m))
    lo, hi = 0, 0  # g(lo) < 0 (g(0) = -inf); hi = 0 until some H with g(H) >= 0 is found
    prev, slope, stalls = 0, theta / m, 0
    while True:
        gx = g(x)
        width = hi - lo if lo and hi else math.inf
        if gx >= 0.0:
            hi = x
        else:
            lo = x
        if hi and hi - lo <= step:
            return hi / m
        if abs(x - prev) >= 32 and prev and (gx - g(prev)) / (x - prev) > 0.0:
            slope = (gx - g(prev)) / (x - prev)  # secant slope of ln ARL0 per lattice step, over a long base
        prev = x
        if lo and hi:
            stalls = stalls + 1 if hi - lo > width / 2 else 0
            if hi - lo <= 16 or stalls >= 2:
                # Near the root ln ARL0 rises in small irregular jumps from one H to the next (the lattice
                # walk reaches some states far more often than others): bisect. Also when secant steps stall.
                x = (lo + hi) // 2
                continue
        # secant step (the first with the asymptotic slope theta) overshooting the root by a lattice step or
        # two, so that the next point brackets it tightly
        root = x - gx / slope
        x = max(math.ceil(root) + 1 if gx < 0.0 else math.ceil(root) - 3, lo + 1)
        # never further than a few units of h in one step (a flat stretch of ln ARL0 makes the secant useless)
        x = min(x, hi - 1) if hi else min(x, 2 * lo + math.ceil(4 * m))


THRESHOLD_BOUND_MARGIN = 1.5


def threshold_lower_bound(arl0_answers: float, q0: float, q1: float) -> float:
    """A cheap bound below :func:`threshold_for_arl`: ln(ARL0 KL(q0||q1)) - ln(q1/q0) - 1.5 (at least 0).

    The facts' shortcut h ~ ln(ARL0 KL) - 0.17 is accurate for small steps; a detractor's step ln(q1/q0)
    makes h coarser for small q0, and the exact h has stayed above ln(ARL0 KL) - step - 1 over random cells
    (tests/unit/test_cusum.py checks the bound on a wide grid). A CUSUM below this bound cannot be at its
    threshold, so the exact threshold is only computed when S comes near it.
    """
    up, _ = llr_increments(q0, q1)
    kl = q0 * math.log(q0 / q1) + (1.0 - q0) * math.log((1.0 - q0) / (1.0 - q1))
    return max(0.0, math.log(max(arl0_answers * kl, 1.0)) - up - THRESHOLD_BOUND_MARGIN)


@lru_cache(maxsize=65536)
def _cached_threshold(arl0_answers: float, q0: float, q1: float) -> float:
    return threshold_for_arl(arl0_answers, q0, q1)


ARL_GRID_PER_OCTAVE = 16


def cached_threshold(arl0_answers: float, q0: float, q1: float) -> float:
    """:func:`threshold_for_arl` on a grid, memoised (the hourly baseline makes q0 vary per segment and hour).

    q0 and q1 are rounded to the nearest 0.001 (so shares closer than that raise ValueError), and the target
    ARL0 UP to the geometric grid 2^(k/16) (steps of 4.4%): a larger ARL0 means fewer false alarms, so the
    threshold is never below the exact one for the same shares and the false-alarm budget is never exceeded.
    At most 65536 (ARL0, q0, q1) cells are kept (least recently used evicted).
    """
    q0r, q1r = round(q0, 3), round(q1, 3)
    if not arl0_answers >= 1.0 or not math.isfinite(arl0_answers):
        raise ValueError(f"target ARL0 {arl0_answers} must be a finite number of answers >= 1")
    k = math.ceil(ARL_GRID_PER_OCTAVE * math.log2(arl0_answers) - 1e-9)
    if 2.0 ** (k / ARL_GRID_PER_OCTAVE) < arl0_answers:
        k += 1
    return _cached_threshold(2.0 ** (k / ARL_GRID_PER_OCTAVE), q0r, q1r)


def fleet_arl0_answers(answers_per_window: float, segments: int, false_alerts_per_day: float, *,
                       windows_per_day: int = 288, cusums_per_segment: int = 2) -> float:
    """In-control ARL, in answers, that each CUSUM needs for a fleet budget of false alerts per day.

    With N segments of r answers per window, each running ``cusums_per_segment`` CUSUMs, the union bound
    (valid under any dependence) splits the budget F evenly: ARL0 = cusums * r * N * windows_per_day / F.
    """
    if not answers_per_window > 0.0:
        raise ValueError(f"answers per window {answers_per_window} must be > 0")
    if segments < 1:
        raise ValueError(f"segment count {segments} must be >= 1")
    if not false_alerts_per_day > 0.0:
        raise ValueError(f"false-alert budget {false_alerts_per_day} per day must be > 0")
    if windows_per_day < 1:
        raise ValueError(f"windows per day {windows_per_day} must be >= 1")
    if cusums_per_segment < 1:
        raise ValueError(f"CUSUMs per segment {cusums_per_segment} must be >= 1")
    return cusums_per_segment * answers_per_window * segments * windows_per_day / false_alerts_per_day


# --- window-level overdispersion ----------------------------------------------------------------------------

DISPERSION_GRID_PER_OCTAVE = 8
MAX_DISPERSION = 0.2  # rho = 1/(kappa + 1) above this (kappa < 4) is taken as 0.2


def grid_up(x: float, per_octave: int) -> int:
    """The index k of the smallest grid point 2^(k/per_octave) at or above x > 0."""
    k = math.ceil(per_octave * math.log2(x) - 1e-9)
    return k + 1 if 2.0 ** (k / per_octave) < x else k


def window_log_mgf(theta: float, q0: float, q1: float, r: float, rho: float) -> float:
    """ln E[exp(theta Y)] of one window's CUSUM increment Y = D ln(q1/q0) + (n - D) ln((1-q1)/(1-q0)).

    n ~ Poisson(r) answers, D | n, p ~ Binomial(n, p) and the window's share p ~ Beta(q0 kappa, (1 - q0) kappa)
    with rho = 1/(kappa + 1) (rho = 0: p = q0). Given p the Poisson sum gives exp(r (p A + (1 - p) B - 1)) with
    A = (q1/q0)^theta, B = ((1-q1)/(1-q0))^theta; the Beta average of exp(t p) is Kummer's 1F1(a; a + b; t),
    taken as e^t 1F1(b; a + b; -t) (no overflow for large t).
    """
    up, down = llr_increments(q0, q1)
    return _mixed_log_mgf(math.exp(theta * up), math.exp(theta * down), q0, r, rho)


def _mixed_log_mgf(big_a: float, big_b: float, q0: float, r: float, rho: float) -> float:
    """ln E[exp(theta Y)] of a window given A = E[e^(theta step) | detractor], B the same for any other answer."""
    if rho <= 0.0:
        return r * (q0 * big_a + (1.0 - q0) * big_b - 1.0)
    kappa = 1.0 / rho - 1.0
    t = r * (big_a - big_b)
    value = float(hyp1f1((1.0 - q0) * kappa, kappa, -t))
    if not 0.0 < value < math.inf:  # under- or overflow for large t and kappa (r in the thousands)
        return r * (big_b - 1.0) + _log_beta_mgf(t, q0 * kappa, (1.0 - q0) * kappa)
    return r * (big_b - 1.0) + t + math.log(value)


def _log_beta_mgf(t: float, a: float, b: float) -> float:
    """ln E[exp(t p)] for p ~ Beta(a, b), a, b > 1, in log space: the integrand's logarithm is concave, so a
    grid of 4001 points over +-40 of its widths around its maximum holds the whole integral (trapezoid rule)."""
    from scipy.special import betaln, logsumexp

    # maximum of f(p) = (a - 1) ln p + (b - 1) ln(1 - p) + t p: t p^2 - c p - (a - 1) = 0, c = t - (a + b - 2)
    c = t - (a + b - 2.0)
    mode = 2.0 * (a - 1.0) / (math.sqrt(max(c * c + 4.0 * t * (a - 1.0), 0.0)) - c)
    mode = min(max(mode, 1e-300), 1.0 - 1e-16)
    width = 1.0 / math.sqrt((a - 1.0) / mode**2 + (b - 1.0) / (1.0 - mode) ** 2 + 1e-300)
    grid = np.linspace(max(mode - 40.0 * width, 0.0), min(mode + 40.0 * width, 1.0), 4001)[1:-1]
    log_f = (a - 1.0) * np.log(grid) + (b - 1.0) * np.log1p(-grid) + t * grid
    step = grid[1] - grid[0]
    return float(logsumexp(log_f) + math.log(step) - betaln(a, b))


def _split_mgf(theta: float, step: float, m: float) -> float:
    """E[exp(theta X)] of a step ``step`` (in units of S) split between its two neighbouring lattice points i/m
    with probabilities that keep its mean (see :func:`windowed_arl`)."""
    low = math.floor(abs(step) * m)
    frac = abs(step) * m - low
    sign = 1.0 if step >= 0.0 else -1.0
    return (1.0 - frac) * math.exp(sign * theta * low / m) + frac * math.exp(sign * theta * (low + 1) / m)


def _lundberg_root(q0: float, q1: float, r: float, rho: float, m: float | None = None) -> float:
    """The positive root theta of ln E[exp(theta Y)] = 0 for one window's increment Y (:func:`window_log_mgf`);
    with ``m``, for the steps split on the lattice of resolution m (:func:`windowed_arl`)."""
    up, down = llr_increments(q0, q1)

    def f(theta: float) -> float:
        if m is None:
            return _mixed_log_mgf(math.exp(theta * up), math.exp(theta * down), q0, r, rho)
        return _mixed_log_mgf(_split_mgf(theta, up, m), _split_mgf(theta, down, m), q0, r, rho)

    upper = 1.0
    while f(upper) <= 0.0:  # the lattice's root can lie above 1
        upper *= 2.0
    return float(brentq(f, 1e-6, upper, xtol=1e-10, rtol=1e-12))


def dispersion_theta(q0: float, q1: float, r: float, rho: float) -> float:
    """The Lundberg exponent theta in (0, 1]: the root of E[exp(theta Y)] = 1 for one window's increment Y.

    For independent answers theta = 1 exactly (each answer's likelihood ratio has mean 1). Windows are
    independent, so the CUSUM's chance to climb to h from 0 decays like e^(-theta h) (Cramer-Lundberg) and
    ln ARL0 grows with slope theta in h; a share that varies between windows (rho > 0) makes theta < 1.
    """
    if rho <= 0.0 or window_log_mgf(1.0, q0, q1, r, rho) <= 1e-12:
        return 1.0
    return _lundberg_root(q0, q1, r, rho)


DISPERSION_H0 = 10.0  # threshold at which the chains are solved: the offset is within ~0.01 of its limit
DISPERSION_MAX_STATES = 125  # lattice states of those chains (dense; 100 or 300 move the offset by < 0.01)
DISPERSION_NODES = 6  # Gauss-Jacobi nodes for the Beta share (5 and 8 give the same offset to 1e-4)
OFFSET_Q0_STEP = 0.02  # offset-ratio nodes: q0 0.02 apart, r and rho 1 per octave (interpolated between)
OFFSET_PER_OCTAVE = 1
OFFSET_MAX_Q0 = 0.95  # the baseline clamps q0 to 0.95
OFFSET_MIN_R_KEY = 0  # r >= 1 answer per window and rho >= 2^-12 at the nodes: below, the ratio is taken as
OFFSET_MIN_RHO_KEY = -12  # constant (the offset and ln theta both vanish linearly in rho)


def beta_quadrature(nodes: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature (shares, weights summing to 1) for the Beta(a, b) distribution, a + b >= 2, by
    Golub-Welsch on the Jacobi recurrence (scipy's roots_jacobi overflows its weights' scale 2^(a + b) for
    a + b > ~1000)."""
    from scipy.linalg import eigh_tridiagonal

    if not (a > 0.0 and b > 0.0 and a + b >= 2.0):
        raise ValueError(f"Beta({a}, {b}) quadrature needs a, b > 0 and a + b >= 2")

    al, be = b - 1.0, a - 1.0  # Jacobi weight (1 - x)^al (1 + x)^be on [-1, 1], p = (1 + x)/2
    n = np.arange(nodes, dtype=float)
    s = 2.0 * n + al + be
    diag = (be * be - al * al) / (s * (s + 2.0))
    k = n[1:]
    sk = s[1:]
    off = np.sqrt(4.0 * k * (k + al) * (k + be) * (k + al + be) / (sk * sk * (sk + 1.0) * (sk - 1.0)))
    x, vectors = eigh_tridiagonal(diag, off)
    weights = vectors[0] ** 2
    return (1.0 + x) / 2.0, weights / weights.sum()


def windowed_arl(h: float, q0: float, q1: float, r: float, rho: float, m: float, nodes: int | None = None) -> float:
    """In-control ARL, in answers, of the per-answer CUSUM (threshold h, design q0 -> q1, from S = 0) when
    answers come in windows of Poisson(r) answers, each window with its own share p ~ Beta(q0 kappa,
    (1 - q0) kappa), rho = 1/(kappa + 1) (rho = 0: p = q0). S is checked after every answer.

    A Markov chain on the lattice S = i/m (states 0..H-1, H = ceil(h m)) at window boundaries. Each step, up or
    down, goes to one of the two lattice points next to it with the probabilities that keep its mean (a
    coarse lattice cannot keep the ratio of the two steps, and ln ARL0 is very sensitive to it). Answers arrive
    in a window as a Poisson process, so a window with share p moves the transient states by exp(r (Q_p - I)),
    Q_p the per-answer transition matrix (mass that reaches H is gone), and r times the integral of
    exp(s r (Q_p - I)) 1 over s in [0, 1] is the expected number of answers before an alarm or the window's
    end (one exponential of the matrix augmented by a column r 1). p is averaged by Gauss-Jacobi quadrature.
    The ARL is the first entry of (I - T)^-1 c, T and c those averages. Dense: H of a few hundred at most.
    """
    from scipy.linalg import expm

    if rho > 0.0:
        kappa = 1.0 / rho - 1.0
        shares, weights = beta_quadrature(nodes or DISPERSION_NODES, q0 * kappa, (1.0 - q0) * kappa)
    else:
        shares, weights = np.array([q0]), np.array([1.0])
    big_h = math.ceil(h * m - 1e-9)
    up, down = llr_increments(q0, q1)
    states = np.arange(big_h)
    gen = np.zeros((shares.size, big_h + 1, big_h + 1))
    gen[:, states, states] = -r
    for step, prob in ((up * m, shares), (down * m, 1.0 - shares)):
        low = math.floor(step)
        frac = step - low
        for move, share in ((low, 1.0 - frac), (low + 1, frac)):
            if share <= 0.0:
                continue
            target = np.maximum(states + move, 0)
            inside = target < big_h
            np.add.at(gen, (slice(None), states[inside], target[inside]), r * share * prob[:, None])
    gen[:, :big_h, big_h] = r
    survive = np.tensordot(weights, expm(gen), axes=1)
    x = np.linalg.solve(np.eye(big_h) - survive[:big_h, :big_h], survive[:big_h, big_h])
    return float(x[0])


def dispersion_offset(q0: float, q1: float, r: float, rho: float) -> tuple[float, float]:
    """(theta, offset): the exact chains' correction of the threshold for overdispersed windows.

    For large h, ln ARL0 = h + c_1 for independent answers and theta h + c_rho for overdispersed windows
    (Cramer-Lundberg), so the overdispersed threshold with the independent one's ARL0 is (h + c_1 - c_rho)/theta:
    offset = c_1 - c_rho. Both constants come from :func:`windowed_arl` (rho = 0 and rho) on one lattice (h = 10,
    125 states): c = ln ARL(h) - theta' h with each chain's own exponent theta' for the split steps (within
    ~1% of 1 and theta), so the lattice's effect on the slope cancels in the difference.
    """
    theta = dispersion_theta(q0, q1, r, rho)
    if theta >= 1.0:
        return 1.0, 0.0
    m = DISPERSION_MAX_STATES / DISPERSION_H0
    c_1 = math.log(windowed_arl(DISPERSION_H0, q0, q1, r, 0.0, m)) - _lundberg_root(q0, q1, r, 0.0, m) * DISPERSION_H0
    c_rho = math.log(windowed_arl(DISPERSION_H0, q0, q1, r, rho, m)) - _lundberg_root(q0, q1, r, rho, m) * DISPERSION_H0
    return theta, c_1 - c_rho


@lru_cache(maxsize=65536)
def _offset_ratio(q0_key: int, shift_milli: int, r_key: int, rho_key: int) -> float:
    """offset / ln theta of :func:`dispersion_offset` at a node: q0 = q0_key * 0.02, q1 = q0 + shift (capped at
    0.99), r = 2^r_key, rho = 2^rho_key (capped)."""
    q0 = q0_key * OFFSET_Q0_STEP
    q1 = min(q0 + shift_milli / 1000, 0.99)
    r = 2.0 ** (r_key / OFFSET_PER_OCTAVE)
    rho = min(2.0 ** (rho_key / OFFSET_PER_OCTAVE), MAX_DISPERSION)
    theta, offset = dispersion_offset(q0, q1, r, rho)
    return offset / math.log(theta) if theta < 1.0 else 1.0


def _interpolated_ratio(q0: float, shift_milli: int, r: float, rho: float) -> float:
    """:func:`_offset_ratio` interpolated (linearly in q0, log r and log rho) between its nodes."""
    top = math.floor(OFFSET_MAX_Q0 / OFFSET_Q0_STEP + 1e-9)  # q0 nodes: 1..top steps
    coords = (min(max(q0 / OFFSET_Q0_STEP, 1.0), float(top)),
              max(OFFSET_PER_OCTAVE * math.log2(r), OFFSET_MIN_R_KEY),
              max(OFFSET_PER_OCTAVE * math.log2(min(rho, MAX_DISPERSION)), OFFSET_MIN_RHO_KEY))
    lows = [math.floor(c) for c in coords]
    lows[0] = min(lows[0], top - 1)
    fracs = [c - lo for c, lo in zip(coords, lows, strict=True)]
    total = 0.0
    for corner in range(8):
        weight = 1.0
        key = []
        for i in range(3):
            bit = corner >> i & 1
            weight *= fracs[i] if bit else 1.0 - fracs[i]
            key.append(lows[i] + bit)
        if weight > 0.0:
            total += weight * _offset_ratio(key[0], shift_milli, key[1], key[2])
    return total


@lru_cache(maxsize=65536)
def dispersion_cell(q0_milli: int, q1_milli: int, r_key: int, rho_key: int) -> tuple[float, float]:
    """(theta, offset) on the grid: shares in thousandths, r = 2^(r_key/8), rho = 2^(rho_key/8) (capped).

    theta is exact for the cell; the offset is ln theta times the ratio offset / ln theta of
    :func:`dispersion_offset`, interpolated between nodes 0.02 apart in q0 and an octave apart in r and rho
    (smooth in all three: the interpolated offset is within ~0.02/theta in h of the chains' except where theta
    < 0.1; a node costs two dense chain solves, a cell only the root of theta).
    """
    q0, q1 = q0_milli / 1000, q1_milli / 1000
    rho = min(2.0 ** (rho_key / DISPERSION_GRID_PER_OCTAVE), MAX_DISPERSION)
    r = 2.0 ** (r_key / DISPERSION_GRID_PER_OCTAVE)
    theta = dispersion_theta(q0, q1, r, rho)
    if theta >= 1.0:
        return 1.0, 0.0
    return theta, math.log(theta) * _interpolated_ratio(q0, q1_milli - q0_milli, r, rho)


def dispersion_factors(q0: float, q1: float, r: float, rho: float) -> tuple[float, float] | None:
    """(theta, offset) of :func:`dispersion_cell` for a segment of r answers per window and between-window share
    variance rho q0 (1 - q0); None when rho = 0 (the threshold stays the independent-answer one).

    Shares are rounded like :func:`cached_threshold`; r and rho are rounded UP to grids of 8 points per octave
    (9% steps): the threshold rises with both, so the rounding errs towards a higher threshold.
    """
    if not rho > 0.0 or not r > 0.0:
        return None
    return dispersion_cell(round(round(q0, 3) * 1000), round(round(q1, 3) * 1000),
                           grid_up(r, DISPERSION_GRID_PER_OCTAVE), grid_up(rho, DISPERSION_GRID_PER_OCTAVE))


def inflate_threshold(h: float, theta: float, offset: float) -> float:
    """The threshold for overdispersed windows: max(h, (h + offset)/theta), h the independent-answer one.

    From ln ARL0 = theta h' + c_rho = h + c_1 (:func:`dispersion_cell`; offset = c_1 - c_rho). Checked against
    Monte Carlo in tests/unit/test_dispersion.py.
    """
    return max(h, (h + offset) / theta)
