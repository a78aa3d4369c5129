"""Per-segment detractor baseline by hour of day, exponentially decayed per UTC day, shrunk toward a parent.

Counts N[h] and D[h] (answers and detractors in UTC hour h) are multiplied by lambda = (H - 1)/(H + 1) once
per elapsed UTC day (H = ``horizon_days``). Day weights 1, lambda, lambda^2, ... give a Kish effective sample
size (sum w)^2 / sum w^2 = (1 + lambda)/(1 - lambda) = H days, so the baseline is as precise as H days of
equally weighted data (the weights themselves sum to (H + 1)/2 days). Decay is lazy: it is applied when a
slice of a later day arrives. The caller freezes the baseline during an alert by not calling :meth:`update`.

Share for hour h: a segment's level L = (sum D + m L_parent)/(sum N + m) is its all-hours share shrunk
toward its parent's level; the prior for hour h is L x q_parent[h] / L_parent (its own level, the parent's
hour-of-day profile), and q0[h] = (D[h] + m prior)/(N[h] + m): the empirical-Bayes shrinkage of
Spiegelhalter (2005) with m = mu (1 - mu)/tau^2 - 1 (tau ~ 2.5 pp between sibling segments around mu = 0.25
gives m ~ 300). With 28 days of history N[h] >> m and the hour's own data decide; on the first days the prior
does, and it keeps a segment's structural level (phone answers run 6 pp above all channels in the demo),
where shrinking toward the parent's share itself raised an alert on every such segment. A root's level is
(sum D + 0.5)/(sum N + 1) and its prior that level. Below ``min_history`` answers a segment takes its
parent's estimate (None without a parent: warming up). q0 is clamped to [0.005, 0.95].

Traffic r (answers per 5-minute window) = sum N / (288 x days covered), the days covered weighted like the
counts: the time from the first slice's start to the latest slice's end, each UTC day of it weighted by
lambda^(days before the latest slice's day). Idle and frozen time counts as covered time with no answers.

Window-level overdispersion (:meth:`HourlyBaseline.dispersion`): the slices it learns are grouped into aligned
five-minute windows. A window of n >= 2 answers, d detractors, is compared with its hour's share q = D[h]/N[h]
as it stood before the window (v = q (1 - q)). If the window's share is Beta with mean q and
1/(kappa + 1) = rho, E[(d - n q)^2] = n v + n (n - 1) v rho + n^2 Var(q); so (method of moments) the decayed
sums A += (d - n q)^2 - n v - n^2 v / N[h] and B += n (n - 1) v give rho = A / B. The null variance of a
term, n v + (2 n^2 - 6 n) v^2 (binomial fourth moment), is summed with squared weights in V, and the estimate
is shrunk to rho = max(0, A - z sqrt(V)) / B (z = ``dispersion_z``): a segment without extra dispersion keeps
rho = 0 unless its noise is z standard errors high. Deviations are taken from the hour-of-day share, so a
daily cycle is not mistaken for dispersion. A, B decay by lambda per day like the counts, V by lambda^2.
Pure computation: no I/O, no clock.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from processors.cusum import MAX_DISPERSION
from processors.timeparse import DAY_MS, HOUR_MS, MINUTE_MS

HOURS = 24
WINDOWS_PER_DAY = 288  # five-minute windows
Estimate = tuple[float, float]  # (share for an hour, all-hours level), before clamping
SLICE_MS = MINUTE_MS
WINDOW_MS = DAY_MS // WINDOWS_PER_DAY
MIN_SHARE, MAX_SHARE = 0.005, 0.95


@dataclass(frozen=True, slots=True)
class BaselineSettings:
    horizon_days: float = 28.0
    min_history: float = 1000.0
    shrinkage: float = 300.0
    dispersion_z: float = 1.0  # standard errors taken off the overdispersion estimate (inf: never correct)

    def __post_init__(self) -> None:
        if not self.horizon_days > 1.0:
            raise ValueError(f"baseline horizon {self.horizon_days} days must be > 1")
        if not self.min_history >= 0.0:
            raise ValueError(f"min_history {self.min_history} must be >= 0")
        if not self.shrinkage >= 0.0:
            raise ValueError(f"shrinkage {self.shrinkage} must be >= 0")
        if not self.dispersion_z >= 0.0:
            raise ValueError(f"dispersion_z {self.dispersion_z} must be >= 0")

    @property
    def decay(self) -> float:
        """lambda = (H - 1)/(H + 1): the per-day weight that makes the effective sample size H days."""
        return (self.horizon_days - 1.0) / (self.horizon_days + 1.0)


DEFAULT_BASELINE = BaselineSettings()


def hour_of(ms: int) -> int:
    """UTC hour of day (0-23) of an epoch-millisecond timestamp."""
    return (ms // HOUR_MS) % HOURS


def clamp_share(q: float) -> float:
    return min(max(q, MIN_SHARE), MAX_SHARE)


# HourlyBaseline.values: one float64 array for the whole baseline (exact for the integers it holds, < 2^53)
N_AT, D_AT, P_AT = 0, HOURS, 2 * HOURS  # decayed answers, detractors, promoters per UTC hour
DISPERSION_AT = 3 * HOURS  # the overdispersion sums A, B, V
WINDOW_AT = DISPERSION_AT + 3  # the open window: start (NaN: none), answers, detractors, hour share, hour answers
SUMS_AT = WINDOW_AT + 5  # sum N, D, P over the hours (NaN: not computed since the last update)
FIRST_AT = SUMS_AT + 3  # first and latest slice fed (NaN: none)
LAST_AT = FIRST_AT + 1
VALUES = LAST_AT + 1
NAN = math.nan


class HourlyBaseline:
    """Decayed answer, detractor and promoter counts per UTC hour, and the first and latest slice fed (epoch ms).

    Promoters only feed the baseline NPS that alerts report; detection uses answers and detractors. ``window``
    is the open five-minute window [start, answers, detractors, hour share before it, hour answers before it]
    and ``dispersion`` the decayed sums [A, B, V] of the overdispersion estimate (module docstring).

    All of it is one float64 array (``values``, layout ``*_AT`` above), about 750 bytes: three arrays of hourly
    counts, the window's and the dispersion's lists, the cached sums and the timestamps' int objects took about
    1,500. ``n``, ``d``, ``p`` (copies), ``window``, ``dispersion``, ``first_ms`` and ``last_ms`` read it as before.
    """

    __slots__ = ("values",)

    def __init__(self, n: Sequence[float] | None = None, d: Sequence[float] | None = None,
                 first_ms: int | None = None, last_ms: int | None = None, p: Sequence[float] | None = None,
                 window: Sequence[float] | None = None, dispersion: Sequence[float] | None = None) -> None:
        values = self.values = zeros(VALUES)
        for at, counts in ((N_AT, n), (D_AT, d), (P_AT, p)):
            if counts is not None:
                values[at:at + HOURS] = array("d", counts)
        if dispersion is not None:
            values[DISPERSION_AT:DISPERSION_AT + 3] = array("d", dispersion)
        values[WINDOW_AT] = NAN if window is None else window[0]
        if window is not None:
            values[WINDOW_AT + 1:WINDOW_AT + 5] = array("d", window[1:5])
        values[SUMS_AT] = NAN
        values[FIRST_AT] = NAN if first_ms is None else first_ms
        values[LAST_AT] = NAN if last_ms is None else last_ms

    @property
    def n(self) -> array:
        """Decayed answers per UTC hour (a copy)."""
        return self.values[N_AT:N_AT + HOURS]

    @property
    def d(self) -> array:
        """Decayed detractors per UTC hour (a copy)."""
        return self.values[D_AT:D_AT + HOURS]

    @property
    def p(self) -> array:
        """Decayed promoters per UTC hour (a copy)."""
        return self.values[P_AT:P_AT + HOURS]

    @property
    def first_ms(self) -> int | None:
        value = self.values[FIRST_AT]
        return None if value != value else int(value)

    @property
    def last_ms(self) -> int | None:
        value = self.values[LAST_AT]
        return None if value != value else int(value)

    @property
    def window(self) -> list[float] | None:
        """The open five-minute window [start, answers, detractors, hour share, hour answers], None if none."""
        values = self.values
        start = values[WINDOW_AT]
        if start != start:
            return None
        return [int(start), int(values[WINDOW_AT + 1]), int(values[WINDOW_AT + 2]), values[WINDOW_AT + 3],
                values[WINDOW_AT + 4]]

    @property
    def dispersion(self) -> list[float]:
        """The decayed overdispersion sums [A, B, V]."""
        return self.values[DISPERSION_AT:DISPERSION_AT + 3].tolist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HourlyBaseline):
            return NotImplemented
        return self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HourlyBaseline{tuple(self.to_list())!r}"

    def update(self, slice_start_ms: int, n: int, d: int, settings: BaselineSettings = DEFAULT_BASELINE,
               promoters: int = 0) -> None:
        """Add a closed one-minute slice of ``n`` answers, ``d`` detractors and ``promoters`` promoters among
        them (slices in time order)."""
        if n < 0 or not 0 <= d <= n or not 0 <= promoters <= n - d:
            raise ValueError(f"need 0 <= detractors + promoters <= answers, got {d} + {promoters} of {n}")
        values = self.values
        window_start = slice_start_ms - slice_start_ms % WINDOW_MS
        last = values[LAST_AT]
        if last != last:
            values[FIRST_AT] = slice_start_ms
        else:
            last_ms = int(last)
            if slice_start_ms < last_ms:
                raise ValueError(f"slice at {slice_start_ms} is older than the latest one at {last_ms}")
            open_start = values[WINDOW_AT]
            if open_start == open_start and open_start != window_start:
                self._close_window()
            days = slice_start_ms // DAY_MS - last_ms // DAY_MS
            if days:
                factor = settings.decay**days
                for at in range(3 * HOURS):
                    values[at] *= factor
                values[DISPERSION_AT] *= factor
                values[DISPERSION_AT + 1] *= factor
                values[DISPERSION_AT + 2] *= factor * factor
        values[SUMS_AT] = NAN
        hour = hour_of(slice_start_ms)
        if values[WINDOW_AT] != values[WINDOW_AT]:  # no open window: open one
            hour_n = values[N_AT + hour]
            values[WINDOW_AT] = window_start
            values[WINDOW_AT + 1] = values[WINDOW_AT + 2] = 0.0
            values[WINDOW_AT + 3] = values[D_AT + hour] / hour_n if hour_n > 0.0 else -1.0
            values[WINDOW_AT + 4] = hour_n
        values[WINDOW_AT + 1] += n
        values[WINDOW_AT + 2] += d
        values[N_AT + hour] += n
        values[D_AT + hour] += d
        values[P_AT + hour] += promoters
        values[LAST_AT] = slice_start_ms

    def _close_window(self) -> None:
        """Add the open window's terms to the overdispersion sums (module docstring) and close it."""
        values = self.values
        n, d = int(values[WINDOW_AT + 1]), int(values[WINDOW_AT + 2])
        q, hour_n = values[WINDOW_AT + 3], values[WINDOW_AT + 4]
        values[WINDOW_AT] = NAN
        v = q * (1.0 - q)
        if n < 2 or not v > 0.0:
            return
        dev = d - n * q
        values[DISPERSION_AT] += dev * dev - n * v - n * n * v / hour_n
        values[DISPERSION_AT + 1] += n * (n - 1) * v
        values[DISPERSION_AT + 2] += n * v + (2 * n * n - 6 * n) * (v * v)

    def rho(self, settings: BaselineSettings = DEFAULT_BASELINE) -> float:
        """The shrunk between-window dispersion rho = 1/(kappa + 1) of the detractor share (0: none), <= 0.2."""
        values = self.values
        a, b, v = values[DISPERSION_AT], values[DISPERSION_AT + 1], values[DISPERSION_AT + 2]
        if not b > 0.0:
            return 0.0
        return min(max(0.0, a - settings.dispersion_z * math.sqrt(v)) / b, MAX_DISPERSION)

    def sums(self) -> tuple[float, float, float]:
        """(sum N, sum D, sum P) over all hours, kept until the next update."""
        values = self.values
        if values[SUMS_AT] != values[SUMS_AT]:
            values[SUMS_AT] = sum(values[N_AT:N_AT + HOURS])
            values[SUMS_AT + 1] = sum(values[D_AT:D_AT + HOURS])
            values[SUMS_AT + 2] = sum(values[P_AT:P_AT + HOURS])
        return values[SUMS_AT], values[SUMS_AT + 1], values[SUMS_AT + 2]

    @property
    def history(self) -> float:
        """Decayed answers over all hours (sum N)."""
        return self.sums()[0]

    def share(self, hour: int, parent: Estimate | None, settings: BaselineSettings = DEFAULT_BASELINE) -> float | None:
        """Baseline detractor share q0 for UTC ``hour`` given the parent's (hour share, level) estimate; None
        while a root is warming up."""
        estimate = self.estimate(hour, parent, settings)
        return None if estimate is None else clamp_share(estimate[0])

    def promoter_share(self, hour: int, parent: Estimate | None,
                       settings: BaselineSettings = DEFAULT_BASELINE) -> float | None:
        """Baseline promoter share for UTC ``hour``, estimated like :meth:`share` (for the baseline NPS)."""
        estimate = self.estimate(hour, parent, settings, promoters=True)
        return None if estimate is None else clamp_share(estimate[0])

    def estimate(self, hour: int, parent: Estimate | None, settings: BaselineSettings = DEFAULT_BASELINE, *,
                 promoters: bool = False) -> Estimate | None:
        """(share for ``hour``, level) before clamping, for this segment's children to build on.

        The level is the all-hours share shrunk toward the parent's level; an hour's prior is that level times
        the parent's hour-of-day profile (its hour share over its level), and the hour's share shrinks toward
        it. Below ``min_history`` the parent's estimate stands in (None without a parent).
        """
        history, detractors, promoter_total = self.sums()
        if history < settings.min_history:
            return parent
        values = self.values
        count = values[(P_AT if promoters else D_AT) + hour]
        total = promoter_total if promoters else detractors
        m = settings.shrinkage
        if parent is None:  # a root: its own level, no profile
            level = (total + 0.5) / (history + 1.0)
            prior = level
            m = max(m, 1.0)
        else:
            parent_hour, parent_level = parent
            level = (total + m * parent_level) / (history + m)
            prior = level * parent_hour / parent_level if parent_level > 0.0 else level
        return (count + m * prior) / (values[N_AT + hour] + m), level

    def days_covered(self, settings: BaselineSettings = DEFAULT_BASELINE) -> float:
        """Days from the first slice's start to the latest slice's end, each day weighted like its counts."""
        first_ms, last_ms = self.first_ms, self.last_ms
        if first_ms is None or last_ms is None:
            return 0.0
        return covered_days(first_ms, last_ms, settings.decay)

    def traffic_per_window(self, settings: BaselineSettings = DEFAULT_BASELINE) -> float:
        """Answers per five-minute window, r = sum N / (288 x decayed days covered); 0 without data."""
        days = self.days_covered(settings)
        return self.history / (days * WINDOWS_PER_DAY) if days > 0.0 else 0.0

    def to_list(self) -> list[Any]:
        return [self.n.tolist(), self.d.tolist(), self.first_ms, self.last_ms, self.p.tolist(), self.window,
                self.dispersion]

    @classmethod
    def from_list(cls, data: list[Any]) -> HourlyBaseline:
        n, d, first_ms, last_ms = data[:4]
        p = data[4] if len(data) > 4 else [0.0] * HOURS
        if len(n) != HOURS or len(d) != HOURS or len(p) != HOURS:
            raise ValueError(f"baseline state needs {HOURS} hourly counts, got {len(n)}, {len(d)} and {len(p)}")
        window = data[5] if len(data) > 5 else None
        dispersion = data[6] if len(data) > 6 else [0.0, 0.0, 0.0]
        if window is not None:
            window = [int(window[0]), int(window[1]), int(window[2]), float(window[3]), float(window[4])]
        return cls([float(x) for x in n], [float(x) for x in d], first_ms, last_ms, [float(x) for x in p], window,
                   [float(x) for x in dispersion])


def zeros(size: int) -> array:
    return array("d", bytes(8 * size))


def covered_days(first_ms: int, last_ms: int, decay: float) -> float:
    """Decayed days from ``first_ms`` to the end of the slice starting at ``last_ms``.

    The latest slice's day has weight 1, the day before it ``decay``, and so on: with K whole days between
    the first and the latest day, days = (part of the latest day) + decay^K (part of the first day)
    + sum_{i=1..K-1} decay^i.
    """
    first_day, last_day = first_ms // DAY_MS, last_ms // DAY_MS
    end = last_ms + SLICE_MS
    k = last_day - first_day
    if k == 0:
        return (end - first_ms) / DAY_MS
    middle = decay * (1.0 - decay ** (k - 1)) / (1.0 - decay)
    return (end - last_day * DAY_MS) / DAY_MS + decay**k * ((first_day + 1) * DAY_MS - first_ms) / DAY_MS + middle
