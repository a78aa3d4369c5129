"""npspulse's detector vectorised over a fleet of segments (numpy), for the evaluation harness.

Per segment it does what :class:`processors.spikes.SpikeDetector` does with its hourly baseline and two
:class:`processors.cusum.BernoulliCusum` (design shifts +10 and +25 pp), slice by slice, with the same
floating-point operations in the same order: the hourly baseline (lazy daily decay, shrinkage toward a
parent, traffic estimate), thresholds from :func:`processors.cusum.cached_threshold` for the fleet budget,
``update_slice``'s count-only (Bresenham) order, and the alert lifecycle. Per closed one-minute slice with
n > 0 answers (empty slices are never fed):

1. q0 = the segment's baseline share for the slice's UTC hour (parent's share below min_history), from the
   state before this slice; r = its traffic estimate; h_k = cached_threshold(fleet ARL0(r), q0, q1_k) with
   q1_k = min(q0 + shift_k, 0.99).
2. Both CUSUMs take the slice (even while an alert is open).
3. Open alert: resolve when open >= 30 min (slice end - alarm slice end) and the Wilson 95% upper bound of
   the last 60 one-minute slices' detractor share is < q0 + 5 pp; both CUSUMs restart at h_k / 2.
   No alert: an alert opens when some S_k >= h_k; the firing CUSUM is the +25 pp one if it fired, its onset
   the answer after its last zero; sev-1 if it is the +25 pp one or the detractor share since the onset's
   slice is >= 20 pp above the baseline expectation sum(n q0) / sum(n) over those slices.
4. The slice is queued for the baseline unless an alert is open after step 3; it is learnt 60 minutes later
   unless an alert opened since claims it (queued slices from the alert's onset slice on are dropped). The
   parent takes every answer at once.

The thresholds are raised for overdispersed segments as the scalar code does (the baseline's shrunk
between-window dispersion rho, :func:`processors.cusum.inflate_threshold` with the same cached factors).

The only departures from the scalar code: ``np.log`` may differ from ``math.log`` in the last bit
(``exact_logs=True`` uses math.log), which moves S by ~1e-16. Threshold-grid keys fall back to Python's
``round`` / ``math.log2`` whenever numpy's value is within 1e-6 of a rounding boundary, so they are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from processors.baseline import (
    DEFAULT_BASELINE,
    MAX_SHARE,
    MIN_SHARE,
    SLICE_MS,
    WINDOW_MS,
    WINDOWS_PER_DAY,
    BaselineSettings,
)
from processors.cusum import (
    ARL_GRID_PER_OCTAVE,
    DISPERSION_GRID_PER_OCTAVE,
    MAX_DISPERSION,
    cached_threshold,
    dispersion_cell,
)
from processors.nps import Z95
from processors.timeparse import DAY_MS, HOUR_MS, MINUTE_MS

HOURS = 24
MAX_DAYS = 4096  # days of history the power tables cover


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's parameters (defaults: the spec)."""

    fleet_segments: int = 1000
    false_alerts_per_day: float = 1.0
    shifts: tuple[float, float] = (0.10, 0.25)
    baseline: BaselineSettings = DEFAULT_BASELINE
    sev1_rise: float = 0.20
    resolve_margin: float = 0.05
    resolve_window_slices: int = 60
    min_open_ms: int = 30 * MINUTE_MS
    baseline_delay_slices: int = 60


def rowsum(a: np.ndarray) -> np.ndarray:
    """Sum of the rows in order, row 0 first: the same float additions as Python's ``sum`` of a column."""
    total = a[0].copy()
    for row in a[1:]:
        total += row
    return total


class FleetBaseline:
    """:class:`HourlyBaseline` for M segments: counts (24, M), first and latest slice start (-1 = none), the open
    five-minute window (start, -1 = none; answers; detractors; hour share and answers before it) and the
    overdispersion sums A, B, V."""

    def __init__(self, size: int, settings: BaselineSettings = DEFAULT_BASELINE) -> None:
        self.settings = settings
        self.n = np.zeros((HOURS, size))
        self.d = np.zeros((HOURS, size))
        self.first_ms = np.full(size, -1, dtype=np.int64)
        self.last_ms = np.full(size, -1, dtype=np.int64)
        self.win_start = np.full(size, -1, dtype=np.int64)
        self.win_n = np.zeros(size, dtype=np.int64)
        self.win_d = np.zeros(size, dtype=np.int64)
        self.win_q = np.zeros(size)
        self.win_hn = np.zeros(size)
        self.disp = np.zeros((3, size))  # A, B, V
        lam = settings.decay
        # Python's float ** int, as HourlyBaseline computes them (numpy's power can differ in the last bit)
        self._pow = np.array([lam**k for k in range(MAX_DAYS)])
        self._middle = np.array([0.0] + [lam * (1.0 - lam ** (k - 1)) / (1.0 - lam) for k in range(1, MAX_DAYS)])

    def update(self, t_ms: int, idx: np.ndarray, n: np.ndarray, d: np.ndarray) -> None:
        """Add the slice starting at ``t_ms`` to segments ``idx`` (n and d aligned with idx, n > 0)."""
        if idx.size == 0:
            return
        last = self.last_ms[idx]
        new = last < 0
        if new.any():
            self.first_ms[idx[new]] = t_ms
        days = np.where(new, 0, t_ms // DAY_MS - last // DAY_MS)
        if (days < 0).any() or (last > t_ms).any():
            raise ValueError("slices must arrive in time order")
        window_start = t_ms - t_ms % WINDOW_MS
        closing = idx[(self.win_start[idx] >= 0) & (self.win_start[idx] != window_start)]
        if closing.size:
            self._close_windows(closing)
        if days.any():
            for k in np.unique(days[days > 0]):
                sel = idx[days == k]
                factor = self.settings.decay ** int(k)
                self.n[:, sel] *= factor
                self.d[:, sel] *= factor
                self.disp[:2, sel] *= factor
                self.disp[2, sel] *= factor * factor
        hour = (t_ms // HOUR_MS) % HOURS
        opening = idx[self.win_start[idx] < 0]
        if opening.size:
            hn = self.n[hour, opening]
            with np.errstate(divide="ignore", invalid="ignore"):
                self.win_q[opening] = np.where(hn > 0.0, self.d[hour, opening] / hn, -1.0)
            self.win_hn[opening] = hn
            self.win_start[opening] = window_start
            self.win_n[opening] = 0
            self.win_d[opening] = 0
        self.win_n[idx] += n
        self.win_d[idx] += d
        self.n[hour, idx] += n
        self.d[hour, idx] += d
        self.last_ms[idx] = t_ms

    def _close_windows(self, idx: np.ndarray) -> None:
        """:meth:`HourlyBaseline._close_window` for segments idx (same operations)."""
        n, d, q, hour_n = self.win_n[idx], self.win_d[idx], self.win_q[idx], self.win_hn[idx]
        self.win_start[idx] = -1
        v = q * (1.0 - q)
        ok = (n >= 2) & (v > 0.0)
        idx, n, d, q, hour_n, v = idx[ok], n[ok], d[ok], q[ok], hour_n[ok], v[ok]
        dev = d - n * q
        self.disp[0, idx] += dev * dev - n * v - n * n * v / hour_n
        self.disp[1, idx] += n * (n - 1) * v
        self.disp[2, idx] += n * v + (2 * n * n - 6 * n) * (v * v)

    def rho(self, idx: np.ndarray) -> np.ndarray:
        """:meth:`HourlyBaseline.rho` of segments idx."""
        a, b, v = self.disp[:, idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.minimum(np.maximum(0.0, a - self.settings.dispersion_z * np.sqrt(v)) / b, MAX_DISPERSION)
        return np.where(b > 0.0, rho, 0.0)

    def history(self) -> np.ndarray:
        return rowsum(self.n)

    def estimate(self, hour: int, idx: np.ndarray, parent: tuple[np.ndarray, np.ndarray] | None,
                 history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`HourlyBaseline.estimate` of segments ``idx``: (hour share, level) before clamping, NaN below
        min_history (warming up: the scalar detector only learns, and its children treat it as absent).
        ``parent`` holds the parents' (hour share, level) aligned with idx, NaN where there is none."""
        n, d = self.n[hour, idx], self.d[hour, idx]
        hist = history[idx]
        total = rowsum(self.d[:, idx])
        m = self.settings.shrinkage
        m_root = max(m, 1.0)
        root_level = (total + 0.5) / (hist + 1.0)
        root_q = (d + m_root * root_level) / (n + m_root)
        if parent is None:
            q, level = root_q, root_level
        else:
            parent_q, parent_level = parent
            with np.errstate(invalid="ignore", divide="ignore"):
                child_level = (total + m * parent_level) / (hist + m)
                prior = np.where(parent_level > 0.0, child_level * parent_q / parent_level, child_level)
                child_q = (d + m * prior) / (n + m)
            absent = np.isnan(parent_level)
            q, level = np.where(absent, root_q, child_q), np.where(absent, root_level, child_level)
        warming = hist < self.settings.min_history
        return np.where(warming, np.nan, q), np.where(warming, np.nan, level)

    def traffic(self, idx: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Answers per five-minute window (processors.baseline.covered_days, vectorised)."""
        first, last = self.first_ms[idx], self.last_ms[idx]
        first_day, last_day = first // DAY_MS, last // DAY_MS
        k = last_day - first_day
        end = last + SLICE_MS
        if (k >= MAX_DAYS).any():
            raise ValueError(f"history longer than {MAX_DAYS} days")
        same_day = (end - first) / DAY_MS
        later = (end - last_day * DAY_MS) / DAY_MS + self._pow[k] * ((first_day + 1) * DAY_MS - first) / DAY_MS \
            + self._middle[k]
        days = np.where(k == 0, same_day, later)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(days > 0.0, history[idx] / (days * WINDOWS_PER_DAY), 0.0)


def clamp_shares(q: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(q, MIN_SHARE), MAX_SHARE)  # NaN stays NaN


def _near_half(y: np.ndarray) -> np.ndarray:
    return np.abs(y - np.floor(y) - 0.5) < 1e-6


def round3_index(q: np.ndarray) -> np.ndarray:
    """round(q, 3) * 1000 as integers, exactly as Python's ``round`` (numpy's only near ties is checked)."""
    y = q * 1000.0
    out = np.rint(y).astype(np.int64)
    for i in np.flatnonzero(_near_half(y)):
        out[i] = round(round(float(q[i]), 3) * 1000.0)
    return out


def grid_index(arl0: np.ndarray, per_octave: int = ARL_GRID_PER_OCTAVE) -> np.ndarray:
    """The grid index k of the smallest 2^(k/per_octave) >= x, as :func:`processors.cusum.cached_threshold`
    (ARL0, 16 per octave) and :func:`processors.cusum.grid_up` compute it."""
    x = per_octave * np.log2(arl0) - 1e-9
    k = np.ceil(x).astype(np.int64)
    k += np.exp2(k / per_octave) < arl0
    risky = (np.abs(x - np.rint(x)) < 1e-6) | (np.abs(np.exp2(k / per_octave) / arl0 - 1.0) < 1e-9)
    for i in np.flatnonzero(risky):
        a = float(arl0[i])
        kk = math.ceil(per_octave * math.log2(a) - 1e-9)
        if 2.0 ** (kk / per_octave) < a:
            kk += 1
        k[i] = kk
    return k


class DispersionFactors:
    """:func:`processors.cusum.inflate_threshold` with :func:`processors.cusum.dispersion_factors` for arrays,
    memoised by the grid key (1000 q0, 1000 q1, r grid index, rho grid index) packed into one integer."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[float, float]] = {}

    def inflate(self, h: np.ndarray, q0: np.ndarray, q1: np.ndarray, r: np.ndarray, rho: np.ndarray) -> np.ndarray:
        sel = np.flatnonzero((rho > 0.0) & (r > 0.0))
        if sel.size == 0:
            return h
        i0, i1 = round3_index(q0[sel]), round3_index(q1[sel])
        kr = grid_index(r[sel], DISPERSION_GRID_PER_OCTAVE)
        krho = grid_index(rho[sel], DISPERSION_GRID_PER_OCTAVE)
        keys = ((i0 * 1001 + i1) * 4096 + kr + 2048) * 4096 + krho + 2048
        cells, inverse = np.unique(keys, return_inverse=True)
        factors = np.empty((cells.size, 2))
        memo = self.memo
        for j, key in enumerate(cells.tolist()):
            value = memo.get(key)
            if value is None:
                value = memo[key] = dispersion_cell(key // 4096 // 4096 // 1001, key // 4096 // 4096 % 1001,
                                                    key // 4096 % 4096 - 2048, key % 4096 - 2048)
            factors[j] = value
        theta, offset = factors[inverse, 0], factors[inverse, 1]
        out = h.copy()
        out[sel] = np.maximum(h[sel], (h[sel] + offset) / theta)
        return out


class ThresholdTable:
    """Memo of :func:`cached_threshold` by its grid key (k, 1000 q0, 1000 q1), looked up for whole arrays.

    Dense storage: rows k - k0, columns 1000 q0, and q1 - q0 within +-3 thousandths of the design shift;
    other keys (q1 capped at 0.99) go to a dict. Missing cells are computed with one exemplar each, by
    :func:`processors.cusum.cached_threshold`.
    """

    SPAN = 3

    def __init__(self, shift: float) -> None:
        self.base = round(shift * 1000)
        self.k0: int | None = None
        self.dense = np.empty((0, 1001, 2 * self.SPAN + 1))
        self.extra: dict[tuple[int, int, int], float] = {}
        self.computed = 0

    def lookup(self, arl0: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        k, i0, i1 = grid_index(arl0), round3_index(q0), round3_index(q1)
        if self.k0 is None:
            self.k0 = int(k.min())
        if k.min() < self.k0 or k.max() >= self.k0 + self.dense.shape[0]:
            self._grow(int(k.min()), int(k.max()))
        col = i1 - i0 - self.base + self.SPAN
        inside = (col >= 0) & (col <= 2 * self.SPAN)
        h = np.full(k.size, np.nan)
        h[inside] = self.dense[k[inside] - self.k0, i0[inside], col[inside]]
        for i in np.flatnonzero(~inside):
            key = (int(k[i]), int(i0[i]), int(i1[i]))
            if key not in self.extra:
                self.extra[key] = self._compute(float(arl0[i]), float(q0[i]), float(q1[i]))
            h[i] = self.extra[key]
        missing = np.flatnonzero(np.isnan(h))
        if missing.size:
            keys = (k[missing] * 1001 + i0[missing]) * 16 + col[missing]
            _, first = np.unique(keys, return_index=True)
            for i in missing[first]:
                self.dense[k[i] - self.k0, i0[i], col[i]] = self._compute(float(arl0[i]), float(q0[i]), float(q1[i]))
            h[missing] = self.dense[k[missing] - self.k0, i0[missing], col[missing]]
        return h

    def _compute(self, arl0: float, q0: float, q1: float) -> float:
        self.computed += 1
        return cached_threshold(arl0, q0, q1)

    def _grow(self, lo: int, hi: int) -> None:
        assert self.k0 is not None
        new_k0 = min(lo, self.k0)
        rows = max(hi + 1, self.k0 + self.dense.shape[0]) - new_k0
        dense = np.full((rows, 1001, 2 * self.SPAN + 1), np.nan)
        dense[self.k0 - new_k0 : self.k0 - new_k0 + self.dense.shape[0]] = self.dense
        self.k0, self.dense = new_k0, dense

    def cells(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.dense))) + len(self.extra)


def by_detractors(idx: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``idx`` reordered by detractors d[idx], most first, as :meth:`DualCusum.update` needs."""
    key = d[idx]
    if key.size and key.max() < 2**15:
        key = key.astype(np.int16)  # radix sort
    return idx[np.argsort(-key, kind="stable")]


class DualCusum:
    """Two BernoulliCusum per segment: S (2, M), last zero and detractors fed at it (2, M), answers, detractors."""

    def __init__(self, size: int) -> None:
        self.s = np.zeros((2, size))
        self.last_zero = np.zeros((2, size), dtype=np.int64)
        self.zero_detractors = np.zeros((2, size), dtype=np.int64)
        self.answers = np.zeros(size, dtype=np.int64)
        self.detractors = np.zeros(size, dtype=np.int64)

    def update(self, idx: np.ndarray, n: np.ndarray, d: np.ndarray, up: np.ndarray, down: np.ndarray) -> None:
        """``BernoulliCusum.update_slice(d, n, q0, q1)`` for segments idx (n > 0); up, down are (2, len(idx)).

        The segments must come sorted by detractors, most first (:func:`by_detractors`): those with at least
        j detractors are then a prefix, so the loop over the j-th detractor works on views, not copies.
        """
        s = self.s[:, idx]
        lz = self.last_zero[:, idx]
        lzd = self.zero_detractors[:, idx]
        base, dbase = self.answers[idx], self.detractors[idx]
        prev = np.full(idx.size, -1, dtype=np.int64)
        at_least = idx.size - np.cumsum(np.bincount(d))  # at_least[j - 1]: segments with >= j detractors
        for j in range(1, at_least.size):
            m = int(at_least[j - 1])
            ns, ds = n[:m], d[:m]
            k = -((-j * ns) // ds) - 1  # j-th detractor's position in the slice
            run = k - prev[:m] - 1
            sv = s[:, :m]
            sv += run * down[:, :m]  # run == 0 adds -0.0: S unchanged
            zero = (sv <= 0.0) & (run > 0)
            if zero.any():
                sv[zero] = 0.0
                np.copyto(lz[:, :m], base[:m] + k, where=zero)
                np.copyto(lzd[:, :m], dbase[:m] + (j - 1), where=zero)
            sv += up[:, :m]
            prev[:m] = k
        m = int(at_least[0])  # segments without detractors (the tail): one run of non-detractors
        if m < idx.size:
            sv = s[:, m:]
            sv += n[m:] * down[:, m:]
            zero = sv <= 0.0
            sv[zero] = 0.0
            np.copyto(lz[:, m:], base[m:] + n[m:], where=zero)
            np.copyto(lzd[:, m:], dbase[m:], where=zero)
        self.s[:, idx] = s
        self.last_zero[:, idx] = lz
        self.zero_detractors[:, idx] = lzd
        self.answers[idx] = base + n
        self.detractors[idx] = dbase + d

    def restart(self, idx: np.ndarray, s0: np.ndarray) -> None:
        """``BernoulliCusum.restart(s0)`` for segments idx; s0 is (2, len(idx))."""
        self.s[:, idx] = s0
        self.last_zero[:, idx] = self.answers[idx]
        self.zero_detractors[:, idx] = self.detractors[idx]


def wilson_upper(d: np.ndarray, n: np.ndarray, z: float = Z95) -> np.ndarray:
    """Upper end of :func:`processors.nps.wilson_interval` (same operations); 1 where n = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = d / n
        z2 = z * z
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
        return np.where(n > 0, np.minimum(1.0, centre + half), 1.0)


@dataclass(slots=True)
class AlarmLog:
    """Alerts opened and resolved, as parallel lists (one entry per event)."""

    segment: list[np.ndarray] = field(default_factory=list)
    slice_ms: list[np.ndarray] = field(default_factory=list)
    cusum: list[np.ndarray] = field(default_factory=list)  # 0: +10 pp, 1: +25 pp
    onset: list[np.ndarray] = field(default_factory=list)  # answer number (1-based, CUSUM count) of the onset
    sev1: list[np.ndarray] = field(default_factory=list)
    resolved_segment: list[np.ndarray] = field(default_factory=list)
    resolved_ms: list[np.ndarray] = field(default_factory=list)

    def opened(self) -> dict[str, np.ndarray]:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

        return {"segment": cat(self.segment, np.int64), "slice_ms": cat(self.slice_ms, np.int64),
                "cusum": cat(self.cusum, np.int64), "onset": cat(self.onset, np.int64),
                "sev1": cat(self.sev1, bool)}

    def resolved(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.resolved_segment:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(self.resolved_segment), np.concatenate(self.resolved_ms)


class FleetDetector:
    """The detector for M segments in groups of ``group`` consecutive segments sharing a parent baseline.

    The parent of a group is a segment of its own (no grandparent) that receives every answer of its
    children; ``freeze_parent()`` stops that. Call :meth:`step` once per minute with every segment's counts.
    """

    def __init__(self, size: int, group: int, settings: DetectorSettings, *, exact_logs: bool = False,
                 tables: tuple[ThresholdTable, ThresholdTable] | None = None) -> None:
        if group < 1 or size % group:
            raise ValueError(f"{size} segments do not split into groups of {group}")
        self.size, self.group, self.settings, self.exact_logs = size, group, settings, exact_logs
        self.baseline = FleetBaseline(size, settings.baseline)
        self.parent = FleetBaseline(size // group, settings.baseline)
        self.parent_frozen = False
        self.group_of = np.arange(size) // group
        self.cusum = DualCusum(size)
        self.tables = tables or (ThresholdTable(settings.shifts[0]), ThresholdTable(settings.shifts[1]))
        self.dispersion = DispersionFactors()
        self.alerting = np.zeros(size, dtype=bool)
        self.opened_end_ms = np.zeros(size, dtype=np.int64)
        window = settings.resolve_window_slices
        self._ring_n = np.zeros((window, size), dtype=np.int64)
        self._ring_d = np.zeros((window, size), dtype=np.int64)
        self._sum_n = np.zeros(size, dtype=np.int64)
        self._sum_d = np.zeros(size, dtype=np.int64)
        self._minute = 0
        self.q0 = np.full(size, np.nan)  # q0 used for each segment's latest fed slice
        self.ev_n = np.zeros((2, size), dtype=np.int64)  # evidence since each CUSUM's onset slice
        self.ev_d = np.zeros((2, size), dtype=np.int64)
        self.ev_e = np.zeros((2, size))
        self.ev_since = np.full((2, size), -1, dtype=np.int64)  # start of the onset slice, -1: none
        slots = settings.baseline_delay_slices + 1  # slices waiting to join the baseline, by minute
        self._queue_n = np.zeros((slots, size), dtype=np.int64)
        self._queue_d = np.zeros((slots, size), dtype=np.int64)
        self._queue_start = np.full(slots, -1, dtype=np.int64)
        self._queue_slot = 0
        self.log = AlarmLog()

    def freeze_parent(self) -> None:
        self.parent_frozen = True

    def feed_history(self, t_ms: int, n: np.ndarray, d: np.ndarray) -> None:
        """Baseline-only slice (no CUSUM, no alerts): children with n > 0 and their parents."""
        idx = np.flatnonzero(n)
        self.baseline.update(t_ms, idx, n[idx], d[idx])
        self._update_parent(t_ms, n, d)

    def _update_parent(self, t_ms: int, n: np.ndarray, d: np.ndarray) -> None:
        if self.parent_frozen:
            return
        gn = n.reshape(-1, self.group).sum(axis=1)
        gd = d.reshape(-1, self.group).sum(axis=1)
        gidx = np.flatnonzero(gn)
        self.parent.update(t_ms, gidx, gn[gidx], gd[gidx])

    def step(self, t_ms: int, n: np.ndarray, d: np.ndarray) -> None:
        """One closed minute starting at ``t_ms``: n, d are int arrays over all segments."""
        settings = self.settings
        slot = self._minute % settings.resolve_window_slices
        self._minute += 1
        self._sum_n += n - self._ring_n[slot]
        self._sum_d += d - self._ring_d[slot]
        self._ring_n[slot] = n
        self._ring_d[slot] = d
        # processors.spikes.SpikeState.learn_until: the slice queued baseline_delay + 1 minutes ago is learnt now
        queue = self._queue_slot = (self._minute - 1) % (settings.baseline_delay_slices + 1)
        if self._queue_start[queue] >= 0:
            learn = np.flatnonzero(self._queue_n[queue])
            self.baseline.update(int(self._queue_start[queue]), learn, self._queue_n[queue, learn], self._queue_d[queue, learn])
        self._queue_n[queue] = 0
        self._queue_d[queue] = 0
        self._queue_start[queue] = t_ms
        fed = by_detractors(np.flatnonzero(n), d)
        if fed.size == 0:
            return
        hour = (t_ms // HOUR_MS) % HOURS
        parent_hist = self.parent.history()
        groups = np.arange(self.parent.n.shape[1])
        parent_q, parent_level = self.parent.estimate(hour, groups, None, parent_hist)
        history = self.baseline.history()
        of = self.group_of[fed]
        q0 = clamp_shares(self.baseline.estimate(hour, fed, (parent_q[of], parent_level[of]), history)[0])
        self.q0[fed] = q0
        idx = fed[~np.isnan(q0)]  # warming up: no CUSUM, no alerts
        q0 = q0[~np.isnan(q0)]
        if idx.size:
            self._detect(t_ms, idx, n[idx], d[idx], q0, self.baseline.traffic(idx, history))
        upd = fed[~self.alerting[fed]]
        self._queue_n[queue, upd] = n[upd]
        self._queue_d[queue, upd] = d[upd]
        self._update_parent(t_ms, n, d)

    def _detect(self, t_ms: int, idx: np.ndarray, n: np.ndarray, d: np.ndarray, q0: np.ndarray, r: np.ndarray) -> None:
        settings = self.settings
        # processors.cusum.fleet_arl0_answers, same operation order
        arl0 = 2 * r * settings.fleet_segments * WINDOWS_PER_DAY / settings.false_alerts_per_day
        h = np.empty((2, idx.size))
        up = np.empty((2, idx.size))
        down = np.empty((2, idx.size))
        rho = self.baseline.rho(idx)
        for c, (shift, table) in enumerate(zip(settings.shifts, self.tables, strict=True)):
            q1 = np.minimum(q0 + shift, 0.99)
            h[c] = self.dispersion.inflate(table.lookup(arl0, q0, q1), q0, q1, r, rho)
            up[c], down[c] = self._logs(q1 / q0), self._logs((1.0 - q1) / (1.0 - q0))
        lz_before = self.cusum.last_zero[:, idx].copy()
        self.cusum.update(idx, n, d, up, down)
        self._track_evidence(t_ms, idx, n, d, q0, lz_before)
        s = self.cusum.s[:, idx]
        open_ = self.alerting[idx]
        end_ms = t_ms + SLICE_MS
        if open_.any():
            o = np.flatnonzero(open_)
            seg = idx[o]
            upper = wilson_upper(self._sum_d[seg], self._sum_n[seg])
            done = (end_ms - self.opened_end_ms[seg] >= settings.min_open_ms) & (upper < q0[o] + settings.resolve_margin)
            if done.any():
                seg, o = seg[done], o[done]
                self.cusum.restart(seg, h[:, o] / 2)
                self.ev_n[:, seg] = 0
                self.ev_d[:, seg] = 0
                self.ev_e[:, seg] = 0.0
                self.ev_since[:, seg] = -1
                self.alerting[seg] = False
                self.log.resolved_segment.append(seg)
                self.log.resolved_ms.append(np.full(seg.size, t_ms, dtype=np.int64))
        fire = (s >= h) & ~open_
        fired = np.flatnonzero(fire[0] | fire[1])
        if fired.size:
            seg = idx[fired]
            which = fire[1, fired].astype(np.int64)  # the +25 pp CUSUM when it fired
            lz = self.cusum.last_zero[which, seg]
            ev_n, ev_d, ev_e = self.ev_n[which, seg], self.ev_d[which, seg], self.ev_e[which, seg]
            sev1 = (which == 1) | (ev_d / ev_n - ev_e / ev_n >= settings.sev1_rise)
            self.alerting[seg] = True
            self.opened_end_ms[seg] = end_ms
            # queued slices from the onset on are the incident's: they never join the baseline
            since = self.ev_since[which, seg]
            claimed = (self._queue_start[:, None] >= since[None, :]) & (since[None, :] >= 0)
            self._queue_n[:, seg] = np.where(claimed, 0, self._queue_n[:, seg])
            log = self.log
            log.segment.append(seg)
            log.slice_ms.append(np.full(seg.size, t_ms, dtype=np.int64))
            log.cusum.append(which)
            log.onset.append(lz + 1)
            log.sev1.append(sev1)

    def _track_evidence(self, t_ms: int, idx: np.ndarray, n: np.ndarray, d: np.ndarray, q0: np.ndarray,
                        lz_before: np.ndarray) -> None:
        """processors.spikes.Evidence per CUSUM (answers, detractors, expected detractors) from the onset slice:
        reset where S hit 0 in this slice (to nothing if at its last answer, else to this slice), else added."""
        lz = self.cusum.last_zero[:, idx]
        moved = lz != lz_before
        past = lz == self.cusum.answers[idx]
        expected = 0.0 + n * q0
        self.ev_n[:, idx] = np.where(moved, np.where(past, 0, n), self.ev_n[:, idx] + n)
        self.ev_d[:, idx] = np.where(moved, np.where(past, 0, d), self.ev_d[:, idx] + d)
        self.ev_e[:, idx] = np.where(moved, np.where(past, 0.0, expected), self.ev_e[:, idx] + n * q0)
        since = self.ev_since[:, idx]
        self.ev_since[:, idx] = np.where(moved, np.where(past, -1, t_ms), np.where(since < 0, t_ms, since))

    def _logs(self, x: np.ndarray) -> np.ndarray:
        if self.exact_logs:
            return np.array([math.log(v) for v in x.tolist()])
        return np.log(x)
