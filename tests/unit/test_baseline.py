"""Hourly baseline (processors.baseline): decay per day, shrinkage, parent fallback, clamping, state, traffic."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from processors.baseline import BaselineSettings, HourlyBaseline, covered_days, hour_of
from processors.timeparse import DAY_MS, HOUR_MS, MINUTE_MS

T0 = 20_000 * DAY_MS  # a UTC midnight
LAM = 27.0 / 29.0  # (28 - 1)/(28 + 1)


def test_decay_makes_the_effective_sample_size_the_horizon() -> None:
    settings = BaselineSettings(horizon_days=28)
    lam = settings.decay
    assert lam == pytest.approx(LAM)
    assert (1 + lam) / (1 - lam) == pytest.approx(28.0)  # Kish: (sum w)^2 / sum w^2 for w_i = lam^i
    assert 1 / (1 - lam) == pytest.approx(14.5)  # the weights sum to (H + 1)/2 days


def test_decay_is_applied_once_per_elapsed_day() -> None:
    base = HourlyBaseline()
    base.update(T0 + 3 * HOUR_MS, 100, 25)
    base.update(T0 + 3 * HOUR_MS + 20 * MINUTE_MS, 10, 1)  # same day: no decay
    assert (base.n[3], base.d[3]) == (110.0, 26.0)
    base.update(T0 + 2 * DAY_MS + 5 * HOUR_MS, 10, 5)  # two days later: factor lam^2 on every hour
    assert base.n[3] == pytest.approx(110 * LAM**2) and base.d[3] == pytest.approx(26 * LAM**2)
    assert (base.n[5], base.d[5]) == (10.0, 5.0)
    assert base.history == pytest.approx(110 * LAM**2 + 10)
    base.update(T0 + 2 * DAY_MS + 23 * HOUR_MS + 59 * MINUTE_MS, 1, 0)  # still day 2
    assert base.n[5] == 10.0 and hour_of(T0 + 2 * DAY_MS + 23 * HOUR_MS) == 23


def test_shrinkage_toward_the_parent() -> None:
    base = HourlyBaseline()
    base.update(T0 + 7 * HOUR_MS, 1200, 360)
    settings = BaselineSettings(shrinkage=300.0, min_history=1000)
    # The parent: 20 % at 07:00, 25 % over all hours. The child's level shrinks toward 25 %, its 07:00 prior is
    # that level times the parent's profile (0.20 / 0.25), and its 07:00 share shrinks toward the prior.
    level = (360 + 300 * 0.25) / (1200 + 300)
    prior7 = level * 0.20 / 0.25
    assert base.estimate(7, (0.20, 0.25), settings) == pytest.approx(((360 + 300 * prior7) / 1500, level))
    assert base.share(7, (0.20, 0.25), settings) == pytest.approx((360 + 300 * prior7) / 1500)
    # an hour never seen: its prior, the child's own level on the parent's profile (not the parent's share)
    assert base.share(8, (0.30, 0.25), settings) == pytest.approx(level * 0.30 / 0.25)
    q_all = 360.5 / 1201
    assert base.share(7, None, settings) == pytest.approx((360 + 300 * q_all) / 1500)
    assert base.share(8, None, settings) == pytest.approx(q_all)  # a root's empty hour: its all-hours share
    assert base.share(7, (0.2, 0.2), BaselineSettings(shrinkage=0.0, min_history=1000)) == pytest.approx(0.30)
    base.update(T0 + 7 * HOUR_MS + 60_000, 10, 2, settings, promoters=5)
    base.update(T0 + 9 * HOUR_MS, 100, 20, settings, promoters=50)
    assert base.promoter_share(9, None, settings) == pytest.approx((50 + 300 * 55.5 / 1311) / 400)
    p_level = (55 + 300 * 0.5) / (1310 + 300)
    assert base.promoter_share(9, (0.5, 0.5), settings) == pytest.approx((50 + 300 * p_level) / (100 + 300))
    with pytest.raises(ValueError, match="promoters"):
        base.update(T0 + 7 * HOUR_MS + 120_000, 10, 6, settings, promoters=5)


def test_parent_share_below_min_history_and_none_without_parent() -> None:
    base = HourlyBaseline()
    base.update(T0, 999, 999)
    assert base.share(0, (0.21, 0.3)) == 0.21  # below min_history: the parent's estimate stands in
    assert base.share(0, None) is None  # warming up: no detection
    assert HourlyBaseline().share(0, None) is None
    base.update(T0 + MINUTE_MS, 1, 1)
    assert base.share(0, None) == 0.95  # 1000 answers now; (1000.5/1001) clamped


def test_share_is_clamped() -> None:
    base = HourlyBaseline()
    base.update(T0, 5000, 0)
    assert base.share(0, None) == 0.005
    assert base.share(0, (0.0001, 0.0001), BaselineSettings(shrinkage=10)) == 0.005
    assert HourlyBaseline().share(4, (0.99, 0.9)) == 0.95  # parent fallback clamped too


def test_state_round_trip_through_json() -> None:
    base = HourlyBaseline()
    base.update(T0 + 90 * MINUTE_MS, 7, 3)
    base.update(T0 + DAY_MS + 13 * HOUR_MS, 4, 1)
    data = orjson.loads(orjson.dumps(base.to_list()))
    again = HourlyBaseline.from_list(data)
    assert again == base
    assert again.share(1, (0.25, 0.25)) == base.share(1, (0.25, 0.25))
    with pytest.raises(ValueError, match="24 hourly counts"):
        HourlyBaseline.from_list([[0.0] * 23, [0.0] * 24, None, None])


def test_traffic_estimate_of_a_constant_rate_is_exact_under_decay() -> None:
    base = HourlyBaseline()
    start = T0 + 6 * HOUR_MS  # start mid-day: the first day is partly covered
    for minute in range(3 * 1440):
        base.update(start + minute * MINUTE_MS, 2, 0)
    assert base.traffic_per_window() == pytest.approx(10.0, rel=1e-12)  # 2 per minute = 10 per 5 minutes
    # covered days: 18 h of day 0 (weight lam^3), days 1 and 2 (lam^2, lam), 6 h of day 3 (weight 1)
    assert base.days_covered() == pytest.approx(0.25 + LAM + LAM**2 + 0.75 * LAM**3)


def test_traffic_counts_idle_time_and_is_zero_without_data() -> None:
    assert HourlyBaseline().traffic_per_window() == 0.0
    base = HourlyBaseline()
    base.update(T0, 30, 0)
    base.update(T0 + 11 * MINUTE_MS, 30, 0)  # 12 minutes covered: 60 answers = 25 per 5 minutes
    assert base.traffic_per_window() == pytest.approx(25.0)
    assert covered_days(T0, T0 + DAY_MS - MINUTE_MS, LAM) == pytest.approx(1.0)
    assert covered_days(T0, T0 + DAY_MS, LAM) == pytest.approx(LAM + 1 / 1440)


def test_update_refuses_bad_counts_and_old_slices() -> None:
    base = HourlyBaseline()
    with pytest.raises(ValueError, match="detractors"):
        base.update(T0, 3, 4)
    base.update(T0 + HOUR_MS, 3, 1)
    with pytest.raises(ValueError, match="older"):
        base.update(T0, 1, 0)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="horizon"):
        BaselineSettings(horizon_days=1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        BaselineSettings(shrinkage=-1.0)
    with pytest.raises(ValueError, match="dispersion_z"):
        BaselineSettings(dispersion_z=-1.0)


# --- between-window overdispersion ---------------------------------------------------------------------------

def test_dispersion_sums_on_fixed_windows() -> None:
    base = HourlyBaseline()
    base.update(T0, 100, 25)  # window 0 of hour 0: no hour share before it, so it is not scored
    base.update(T0 + 5 * MINUTE_MS, 6, 2)  # window 1, two slices; the hour share before it is 25/100
    base.update(T0 + 7 * MINUTE_MS, 4, 3)
    assert base.dispersion == [0.0, 0.0, 0.0] and base.window == [5 * MINUTE_MS + T0, 10, 5, 0.25, 100.0]
    base.update(T0 + 10 * MINUTE_MS, 1, 0)  # closes window 1: n = 10, d = 5, q = 0.25, v = 0.1875
    v = 0.25 * 0.75
    assert base.dispersion == pytest.approx([(5 - 2.5) ** 2 - 10 * v - 100 * v / 100, 90 * v, 10 * v + 140 * v * v])
    base.update(T0 + DAY_MS + 10 * MINUTE_MS, 2, 1)  # a day later: window 2 (n = 1) adds nothing; decay
    a, b, var = base.dispersion
    assert b == pytest.approx(90 * v * LAM) and var == pytest.approx((10 * v + 140 * v * v) * LAM**2)
    rho = max(0.0, a - math.sqrt(var)) / b
    assert base.rho() == pytest.approx(rho) and rho > 0.0
    assert base.rho(BaselineSettings(dispersion_z=0.0)) == min(a / b, 0.2)  # capped
    assert HourlyBaseline().rho() == 0.0


def _simulated(kind: str, r: float, seed: int, days: int = 28) -> HourlyBaseline:
    """A baseline fed ``days`` of five-minute windows (one slice each) of Poisson(r) answers."""
    rng = np.random.default_rng(seed)
    base = HourlyBaseline()
    for day in range(days):
        for w in range(288):
            t = T0 + day * DAY_MS + w * 5 * MINUTE_MS
            if kind == "overdispersed":  # kappa = 200: rho = 1/201
                q = rng.beta(0.25 * 200, 0.75 * 200)
            else:  # +-5 pp daily cycle, which the hour-of-day shares follow
                q = 0.25 + 0.05 * math.sin(2 * math.pi * (w + 0.5) / 288)
            n = int(rng.poisson(r))
            base.update(t, n, int(rng.binomial(n, q)))
    return base


def test_dispersion_estimate_recovers_kappa_and_ignores_a_daily_cycle() -> None:
    loose = BaselineSettings(dispersion_z=0.0)
    assert _simulated("overdispersed", 50.0, 2).rho(loose) == pytest.approx(1 / 201, rel=0.15)
    cycle = _simulated("daily-cycle", 50.0, 3)
    assert cycle.rho(loose) < 1 / 2000  # the cycle is in the hour shares, not between windows
    assert cycle.rho() == 0.0  # shrunk: no correction


def test_dispersion_state_round_trips_and_reads_older_states() -> None:
    base = _simulated("overdispersed", 10.0, 3, days=1)
    again = HourlyBaseline.from_list(orjson.loads(orjson.dumps(base.to_list())))
    assert again == base and again.rho() == base.rho()
    older = HourlyBaseline.from_list(base.to_list()[:5])  # a state saved before the dispersion sums existed
    assert older.window is None and older.dispersion == [0.0, 0.0, 0.0]
