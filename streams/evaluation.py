"""Detection-quality evaluation: npspulse's detector and three window rules on simulated fleets (numpy).

Every simulated segment first gets ``history_days`` of five-minute counts fed through the baseline (so its q0
and its overdispersion estimate carry real estimation error), then minute slices with n ~ Poisson(r/5)
answers. Null streams measure false alarms per 1000 five-minute windows per segment against the budget 1000
F/(288 N); the window rules are calibrated on the same null streams to npspulse's measured false-alarm count.
Spike streams (a shift starting at a random minute) measure detection delay in answers and minutes and
npspulse's onset error. A separate run measures the delay cost of feeding the CUSUMs per one-minute slice
instead of per answer.

Segments are independent, so a null scenario's segment-days are spread over as many simulated segments as is
efficient; the fleet size N enters through the thresholds (fleet budget) and the parent groups. Scenario
groups (one traffic rate and fleet size each) run in parallel worker processes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors.baseline import WINDOWS_PER_DAY
from processors.cusum import cached_threshold, fleet_arl0_answers, llr_increments
from processors.timeparse import DAY_MS, MINUTE_MS
from streams.fleet_detector import DetectorSettings, DualCusum, FleetDetector, ThresholdTable, by_detractors
from streams.window_tests import GRIDS, RULES, EpisodeCounter, WindowRules, calibrate

Q0 = 0.25
CYCLE_AMPLITUDE = 0.05
KAPPA = 200.0
NULL_KINDS = ("independent", "daily-cycle", "overdispersed")
T0_MS = 20_000 * DAY_MS  # history starts at a UTC midnight
FIXED_UNCALIBRATED = 0.15
WINDOW_MINUTES = 5
SPIKE_ONSET_SPREAD_MIN = 360  # spike onsets uniform over 6 hours, starting 1 hour into the evaluation


@dataclass(frozen=True, slots=True)
class EvalConfig:
    rates: tuple[float, ...] = (2.0, 10.0, 50.0)
    shifts: tuple[float, ...] = (0.10, 0.20, 0.30)
    fleets: tuple[int, ...] = (10, 100, 1000)
    null_kinds: tuple[str, ...] = NULL_KINDS
    seed: int = 1
    false_alerts_per_day: float = 1.0
    history_days: int = 28
    null_alarms: float = 60.0  # expected npspulse false alarms per null scenario at the budget: sets its size
    max_null_segments: int = 10_000
    spike_instances: int = 2000
    cap_answers: float = 3000.0  # a spike is followed for at most this many answers (r/5 per minute)
    batching_instances: int = 4000
    batching_fleet: int = 100
    workers: int = 2

    @classmethod
    def quick(cls, seed: int = 1) -> EvalConfig:
        """Smoke size: one rate and fleet, the independent null, an obvious +40 pp spike."""
        return cls(rates=(10.0,), shifts=(0.40,), fleets=(10,), null_kinds=("independent",), seed=seed, null_alarms=8.0,
                   spike_instances=200, cap_answers=1000.0, batching_instances=300, workers=1)


def budget_per_1000(fleet: int, false_alerts_per_day: float) -> float:
    """The configured false alarms per 1000 windows per segment: 1000 F / (288 N)."""
    return 1000.0 * false_alerts_per_day / (288.0 * fleet)


# --- streams ----------------------------------------------------------------------------------------------

def cycle_means(parts: int = 24) -> np.ndarray:
    """Mean of the daily cycle over each of ``parts`` equal parts of the UTC day (exact integral of the sinusoid)."""
    edges = 2.0 * math.pi * np.arange(parts + 1) / parts
    return Q0 + CYCLE_AMPLITUDE * parts / (2.0 * math.pi) * (np.cos(edges[:-1]) - np.cos(edges[1:]))


def cycle_hour_means() -> np.ndarray:
    """Mean of the daily cycle over each UTC hour."""
    return cycle_means(24)


def _thinned(rng: np.random.Generator, lam: float | np.ndarray, q: float | np.ndarray,
             size: Any) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(lam) answers of which Binomial(n, q) detractors, as two independent Poisson counts."""
    d = rng.poisson(lam * q, size)
    return d + rng.poisson(lam * (1.0 - q), size), d


def history_day(rng: np.random.Generator, kind: str, r: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One day of five-minute (answers, detractors), shape (288, size); overdispersion drawn per window."""
    if kind == "overdispersed":
        q: float | np.ndarray = rng.beta(Q0 * KAPPA, (1.0 - Q0) * KAPPA, (WINDOWS_PER_DAY, size))
    elif kind == "daily-cycle":
        q = cycle_means(WINDOWS_PER_DAY)[:, None]
    else:
        q = Q0
    return _thinned(rng, r, q, (WINDOWS_PER_DAY, size))


def feed_history(det: FleetDetector, rng: np.random.Generator, kind: str, r: float, days: int) -> int:
    """Days of five-minute counts through the baseline (each window as one slice at its last minute); returns t0.

    Windows, not hours: the baseline estimates the between-window dispersion of the share from them.
    """
    for day in range(days):
        n, d = history_day(rng, kind, r, det.size)
        for w in range(WINDOWS_PER_DAY):
            det.feed_history(T0_MS + day * DAY_MS + w * WINDOW_MINUTES * MINUTE_MS + (WINDOW_MINUTES - 1) * MINUTE_MS,
                             n[w], d[w])
    return T0_MS + days * DAY_MS


class MinuteStream:
    """Minute counts for a null kind, optionally with a per-segment shift from an onset minute (drawn by hour)."""

    BLOCK = 60

    def __init__(self, rng: np.random.Generator, kind: str, r: float, size: int,
                 onset: np.ndarray | None = None, shift: float = 0.0) -> None:
        self.rng, self.kind, self.lam, self.size = rng, kind, r / 5.0, size
        self.onset, self.shift = onset, shift
        self._start = -self.BLOCK
        self._n = self._d = np.empty((0, size), dtype=np.int64)

    def minute(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        if not self._start <= m < self._start + self.BLOCK:
            self._start = m - m % self.BLOCK
            self._n, self._d = self._block(self._start)
        return self._n[m - self._start], self._d[m - self._start]

    def _block(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        minutes = np.arange(start, start + self.BLOCK)[:, None]
        q: float | np.ndarray = Q0
        if self.kind == "daily-cycle":
            q = Q0 + CYCLE_AMPLITUDE * np.sin(2.0 * np.pi * (minutes % 1440 + 0.5) / 1440.0)
        elif self.kind == "overdispersed":  # one share per five-minute window (blocks start on a window)
            q = np.repeat(self.rng.beta(Q0 * KAPPA, (1.0 - Q0) * KAPPA, (self.BLOCK // 5, self.size)), 5, axis=0)
        if self.onset is not None:
            q = q + self.shift * (minutes >= self.onset[None, :])
        return _thinned(self.rng, self.lam, q, (self.BLOCK, self.size))


# --- null runs --------------------------------------------------------------------------------------------

def null_size(config: EvalConfig, fleet: int) -> tuple[int, int]:
    """(segments, days) for a null scenario: ``null_alarms`` expected false alarms at the budget."""
    segment_days = config.null_alarms * fleet / config.false_alerts_per_day
    group = min(fleet, config.max_null_segments)
    segments = min(config.max_null_segments, max(group, math.ceil(segment_days)))
    segments = math.ceil(segments / group) * group
    return segments, max(1, math.ceil(segment_days / segments))


def run_null(config: EvalConfig, kind: str, r: float, fleet: int, tables: tuple[ThresholdTable, ThresholdTable],
             seed: list[int]) -> dict[str, Any]:
    started = time.perf_counter()
    segments, days = null_size(config, fleet)
    rng = np.random.default_rng(seed)
    settings = DetectorSettings(fleet_segments=fleet, false_alerts_per_day=config.false_alerts_per_day)
    det = FleetDetector(segments, min(fleet, segments), settings, tables=tables)
    t0 = feed_history(det, rng, kind, r, config.history_days)
    stream = MinuteStream(rng, kind, r, segments)
    rules = WindowRules(segments)
    counters = {rule: EpisodeCounter(GRIDS[rule], segments) for rule in RULES}
    minutes = days * 1440
    for m in range(minutes):
        n, d = stream.minute(m)
        det.step(t0 + m * MINUTE_MS, n, d)
        idx = np.flatnonzero(n)
        rules.add(idx, n[idx], d[idx], det.q0[idx])
        if m % 5 == 4:
            stats = rules.close()
            for rule in RULES:
                counters[rule].add(stats[rule])
    opened = det.log.opened()
    alarms = int(opened["segment"].size)
    windows = segments * minutes / 5.0
    durations, unresolved = alert_durations(opened["segment"], opened["slice_ms"], *det.log.resolved())
    rho = det.baseline.rho(np.arange(segments))  # each segment's shrunk dispersion estimate at the end
    counts = {rule: counters[rule].counts() for rule in RULES}
    result: dict[str, Any] = {
        "kind": kind, "rate": r, "fleet": fleet, "segments": segments, "days": days, "windows": windows,
        "alarms": alarms, "fa_per_1000": 1000.0 * alarms / windows,
        "budget_per_1000": budget_per_1000(fleet, config.false_alerts_per_day),
        "alert_minutes_median": float(np.median(durations)) if durations.size else math.nan,
        "alert_minutes_p90": float(np.quantile(durations, 0.9)) if durations.size else math.nan,
        "unresolved": unresolved,
        "dispersed_share": float((rho > 0.0).mean()),
        "kappa_median": float(1.0 / np.median(rho[rho > 0.0]) - 1.0) if (rho > 0.0).any() else None,
        "fixed_uncalibrated_per_1000": 1000.0 * counters["fixed"].count_at(FIXED_UNCALIBRATED) / windows,
        "calibration": {}, "seconds": 0.0,
    }
    result["ratio"] = result["fa_per_1000"] / result["budget_per_1000"]
    for rule in RULES:
        cal = calibrate(GRIDS[rule], counts[rule], alarms)
        result["calibration"][rule] = {"threshold": cal.threshold, "alarms": cal.alarms,
                                       "fa_per_1000": 1000.0 * cal.alarms / windows}
    result["seconds"] = time.perf_counter() - started
    return result


def alert_durations(seg: np.ndarray, opened_ms: np.ndarray, res_seg: np.ndarray,
                    res_ms: np.ndarray) -> tuple[np.ndarray, int]:
    """Minutes from each alarm slice to its resolving slice, and the number of alerts never resolved."""
    order = np.lexsort((opened_ms, seg))
    rorder = np.lexsort((res_ms, res_seg))
    seg, opened_ms = seg[order], opened_ms[order]
    res_seg, res_ms = res_seg[rorder], res_ms[rorder]
    out: list[float] = []
    unresolved = 0
    j = 0
    for s, t in zip(seg.tolist(), opened_ms.tolist(), strict=True):
        while j < res_seg.size and (res_seg[j] < s or (res_seg[j] == s and res_ms[j] < t)):
            j += 1
        if j < res_seg.size and res_seg[j] == s:
            out.append((res_ms[j] - t) / MINUTE_MS)
            j += 1
        else:
            unresolved += 1
    return np.array(out), unresolved


# --- spike runs -------------------------------------------------------------------------------------------

def run_spike(config: EvalConfig, r: float, fleet: int, shift: float, thresholds: dict[str, float],
              tables: tuple[ThresholdTable, ThresholdTable], seed: list[int]) -> dict[str, Any]:
    """Spikes of ``shift`` on the independent null: delays of npspulse and of the calibrated window rules.

    The parent baseline stands for the rest of the fleet (not spiking): it is frozen after the history.
    A segment with an alert already open at its onset (an earlier false alarm) is left out of the delays.
    """
    started = time.perf_counter()
    size = config.spike_instances
    group = min(fleet, size)
    size = math.ceil(size / group) * group
    rng = np.random.default_rng(seed)
    settings = DetectorSettings(fleet_segments=fleet, false_alerts_per_day=config.false_alerts_per_day)
    det = FleetDetector(size, group, settings, tables=tables)
    t0 = feed_history(det, rng, "independent", r, config.history_days)
    det.freeze_parent()
    onset = 60 + rng.integers(0, SPIKE_ONSET_SPREAD_MIN, size)
    stream = MinuteStream(rng, "independent", r, size, onset=onset, shift=shift)
    rules = WindowRules(size)
    cap_minutes = int(config.cap_answers / (r / 5.0))
    last_minute = int(onset.max()) + cap_minutes
    cum = np.zeros(size, dtype=np.int64)
    cum_window = np.zeros(size, dtype=np.int64)
    before = np.zeros(size, dtype=np.int64)
    cusum_before = np.zeros(size, dtype=np.int64)
    excluded = np.zeros(size, dtype=bool)
    names = ("npspulse", *RULES)
    found = {name: np.zeros(size, dtype=bool) for name in names}
    delay = {name: np.zeros(size, dtype=np.int64) for name in names}
    minutes = {name: np.zeros(size, dtype=np.int64) for name in names}
    onset_error = np.zeros(size, dtype=np.int64)
    sev1 = np.zeros(size, dtype=bool)
    m = 0
    for m in range(last_minute + 1):
        starting = np.flatnonzero(onset == m)
        if starting.size:
            before[starting] = cum[starting]
            cusum_before[starting] = det.cusum.answers[starting]
            excluded[starting] = det.alerting[starting]
        n, d = stream.minute(m)
        done = found["npspulse"] | excluded
        done &= found["test-1h"] & found["fixed"] & found["test-5m"]
        n[done], d[done] = 0, 0  # nothing left to measure on these: skip their work
        cum += n
        logged = len(det.log.segment)
        det.step(t0 + m * MINUTE_MS, n, d)
        for part in range(logged, len(det.log.segment)):
            seg = det.log.segment[part]
            keep = (m >= onset[seg]) & ~excluded[seg] & ~found["npspulse"][seg]
            seg = seg[keep]
            found["npspulse"][seg] = True
            delay["npspulse"][seg] = cum[seg] - before[seg]
            minutes["npspulse"][seg] = m + 1 - onset[seg]
            onset_error[seg] = det.log.onset[part][keep] - (cusum_before[seg] + 1)
            sev1[seg] = det.log.sev1[part][keep]
        idx = np.flatnonzero(n)
        rules.add(idx, n[idx], d[idx], det.q0[idx])
        if m % 5 == 4:
            stats = rules.close()
            cum_window[:] = cum
            live = m + 1 > onset
            for rule in RULES:
                hit = np.flatnonzero(live & ~found[rule] & (stats[rule] >= thresholds[rule]))
                found[rule][hit] = True
                delay[rule][hit] = cum[hit] - before[hit]
                minutes[rule][hit] = m + 1 - onset[hit]
            if m > onset.max() and (found["npspulse"] | excluded).all() and found["test-1h"].all():
                break
    counted = ~excluded
    result: dict[str, Any] = {"rate": r, "fleet": fleet, "shift": shift, "instances": size,
                              "excluded": int(excluded.sum()), "minutes_run": m + 1, "detectors": {}}
    for name in names:
        memoryless = name in ("fixed", "test-5m")
        sel = counted & found[name]
        cens = counted & ~found[name]
        at_risk = (cum_window - before)[cens]
        at_risk_min = np.maximum(0, (m + 1) // 5 * 5 - onset[cens])
        result["detectors"][name] = delay_summary(delay[name][sel], minutes[name][sel], at_risk, at_risk_min, memoryless)
    ok = counted & found["npspulse"]
    errors = onset_error[ok]
    result["onset_error"] = {"median": float(np.median(errors)) if errors.size else math.nan,
                             "q25": float(np.quantile(errors, 0.25)) if errors.size else math.nan,
                             "q75": float(np.quantile(errors, 0.75)) if errors.size else math.nan}
    result["sev1_share"] = float(sev1[ok].mean()) if ok.any() else math.nan
    result["seconds"] = time.perf_counter() - started
    return result


def delay_summary(answers: np.ndarray, mins: np.ndarray, cens_answers: np.ndarray, cens_minutes: np.ndarray,
                  memoryless: bool) -> dict[str, Any]:
    """Mean, its standard error and p90 of the delays; censored runs handled as described in the report.

    Window rules judge independent windows, so their waiting time is memoryless: with censoring, the mean
    is the exposure estimate (answers observed after onset, detected or not, per detection) and the p90 the
    exponential one (mean x ln 10) when the empirical p90 is censored. For npspulse and the hourly test the
    mean over detected runs is a lower bound when some were censored.
    """
    k, c = int(answers.size), int(cens_answers.size)
    out: dict[str, Any] = {"detected": k, "censored": c, "estimate": "empirical"}
    if k == 0:
        out.update(mean=math.inf, p90=math.inf, mean_minutes=math.inf, p90_minutes=math.inf, se=math.nan)
        return out
    out["se"] = float(answers.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    if c == 0:
        out.update(mean=float(answers.mean()), p90=float(np.quantile(answers, 0.9)),
                   mean_minutes=float(mins.mean()), p90_minutes=float(np.quantile(mins, 0.9)))
        return out
    if memoryless:
        mean = float((answers.sum() + cens_answers.sum()) / k)
        mean_min = float((mins.sum() + cens_minutes.sum()) / k)
        out["estimate"] = "exposure"
    else:
        mean, mean_min = float(answers.mean()), float(mins.mean())
        out["estimate"] = "lower bound"
    values = np.concatenate([answers, np.full(c, np.inf)])
    values_min = np.concatenate([mins, np.full(c, np.inf)])
    p90 = float(np.quantile(values, 0.9, method="inverted_cdf"))
    p90_min = float(np.quantile(values_min, 0.9, method="inverted_cdf"))
    if not math.isfinite(p90) and memoryless:
        p90, p90_min = mean * math.log(10.0), mean_min * math.log(10.0)
    out.update(mean=mean, p90=p90, mean_minutes=mean_min, p90_minutes=p90_min)
    return out


# --- batching cost ----------------------------------------------------------------------------------------

def run_batching(config: EvalConfig, r: float, shift: float, seed: list[int]) -> dict[str, Any]:
    """Per-answer dual CUSUM vs per-slice (count-only order) on the same answers, from S = 0 at the onset.

    q0 = 0.25 is known and h is the fleet threshold for ``batching_fleet`` segments, so only the batching
    differs. Delays are answers to the alarm: the alarming answer, or the end of the alarming slice.
    """
    rng = np.random.default_rng(seed)
    size = config.batching_instances
    arl0 = fleet_arl0_answers(r, config.batching_fleet, config.false_alerts_per_day)
    q1s = (Q0 + 0.10, Q0 + 0.25)
    h = np.array([cached_threshold(arl0, Q0, q1) for q1 in q1s])[:, None]
    steps = [llr_increments(Q0, q1) for q1 in q1s]
    up = np.array([s[0] for s in steps])[:, None]
    down = np.array([s[1] for s in steps])[:, None]
    length = int(config.cap_answers)
    x = rng.random((length, size), dtype=np.float32) < Q0 + shift
    # per answer
    s = np.zeros((2, size))
    per_answer = np.zeros(size, dtype=np.int64)
    for i in range(length):
        s = np.maximum(0.0, s + np.where(x[i], up, down))
        fired = (s >= h).any(axis=0) & (per_answer == 0)
        per_answer[fired] = i + 1
        if (per_answer > 0).all():
            break
    # per slice, same answers in arrival order, cut into Poisson(r/5) minute slices
    cusum = DualCusum(size)
    det_cum = np.vstack([np.zeros((1, size), dtype=np.int32), np.cumsum(x, axis=0, dtype=np.int32)])
    pos = np.zeros(size, dtype=np.int64)
    per_slice = np.zeros(size, dtype=np.int64)
    ups, downs = np.repeat(up, size, axis=1), np.repeat(down, size, axis=1)
    while (per_slice == 0).any():
        n = rng.poisson(r / 5.0, size)
        n = np.minimum(n, length - pos)
        live = np.flatnonzero((n > 0) & (per_slice == 0))
        if live.size == 0:
            break
        d = np.zeros(size, dtype=np.int64)
        d[live] = det_cum[pos[live] + n[live], live] - det_cum[pos[live], live]
        live = by_detractors(live, d)
        cusum.update(live, n[live], d[live], ups[:, live], downs[:, live])
        pos[live] += n[live]
        fired = live[(cusum.s[:, live] >= h).any(axis=0)]
        per_slice[fired] = pos[fired]
    ok = (per_answer > 0) & (per_slice > 0)
    diff = per_slice[ok] - per_answer[ok]
    return {"rate": r, "shift": shift, "instances": int(ok.sum()), "per_answer": float(per_answer[ok].mean()),
            "per_slice": float(per_slice[ok].mean()), "cost": float(diff.mean()),
            "cost_se": float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.nan}


# --- orchestration ----------------------------------------------------------------------------------------

_TABLES: dict[tuple[float, float], tuple[ThresholdTable, ThresholdTable]] = {}


def _tables(shifts: tuple[float, float]) -> tuple[ThresholdTable, ThresholdTable]:
    """Threshold memo per process, shared by every scenario it runs."""
    if shifts not in _TABLES:
        _TABLES[shifts] = (ThresholdTable(shifts[0]), ThresholdTable(shifts[1]))
    return _TABLES[shifts]


def _seed(config: EvalConfig, *parts: float) -> list[int]:
    return [config.seed, *(round(p * 1000) for p in parts)]


def run_task(config: EvalConfig, r: float, fleet: int, kind: str) -> dict[str, Any]:
    """One null scenario of a traffic rate and fleet size; for the independent null also the spike scenarios,
    whose window rules it calibrates."""
    single_threaded_blas()
    started, cpu = time.perf_counter(), time.process_time()
    tables = _tables(DetectorSettings().shifts)
    cells = sum(t.computed for t in tables)
    null = run_null(config, kind, r, fleet, tables, _seed(config, 1, NULL_KINDS.index(kind), r, fleet))
    spikes: list[dict[str, Any]] = []
    if kind == "independent":
        thresholds = {rule: null["calibration"][rule]["threshold"] for rule in RULES}
        spikes = [run_spike(config, r, fleet, shift, thresholds, tables, _seed(config, 2, shift, r, fleet))
                  for shift in config.shifts]
    return {"rate": r, "fleet": fleet, "kind": kind, "null": null, "spikes": spikes,
            "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "threshold_cells": sum(t.computed for t in tables) - cells, "pid": os.getpid()}


def run_group(config: EvalConfig, r: float, fleet: int) -> dict[str, Any]:
    """The null scenarios of one traffic rate and fleet size, then its spike scenarios (one process)."""
    return _merge(config, [run_task(config, r, fleet, kind) for kind in _kinds(config)])


def _kinds(config: EvalConfig) -> list[str]:
    if "independent" not in config.null_kinds:
        raise ValueError("the window rules are calibrated on the independent null: it must be among the null kinds")
    return ["independent", *(kind for kind in config.null_kinds if kind != "independent")]


def _merge(config: EvalConfig, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's result from its tasks: nulls in ``config.null_kinds`` order, CPU seconds and cells summed."""
    by_kind = {t["kind"]: t for t in tasks}
    first = tasks[0]
    return {"rate": first["rate"], "fleet": first["fleet"],
            "nulls": {kind: by_kind[kind]["null"] for kind in config.null_kinds},
            "spikes": by_kind["independent"]["spikes"], "seconds": sum(t["seconds"] for t in tasks),
            "cpu_seconds": sum(t["cpu_seconds"] for t in tasks),
            "threshold_cells": sum(t["threshold_cells"] for t in tasks), "pid": first["pid"]}


def run_batching_all(config: EvalConfig) -> tuple[list[dict[str, Any]], float]:
    """The batching runs and the CPU seconds they took."""
    single_threaded_blas()
    cpu = time.process_time()
    runs = [run_batching(config, r, shift, _seed(config, 3, shift, r)) for r in config.rates for shift in config.shifts]
    return runs, time.process_time() - cpu


def evaluate(config: EvalConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every scenario (``config.workers`` processes) and return the results as plain data.

    The work is split into one task per null scenario (the independent one with its group's spike scenarios)
    plus the batching run, longest first, so that the workers finish close together.
    """
    started = time.perf_counter()
    say = progress or (lambda _text: None)
    kinds = _kinds(config)
    tasks = sorted(((r, fleet, kind) for r in config.rates for fleet in config.fleets for kind in kinds),
                   key=lambda t: -_task_cost(config, *t))
    done: list[dict[str, Any]] = []
    if config.workers <= 1:
        for r, fleet, kind in tasks:
            done.append(run_task(config, r, fleet, kind))
            say(f"r={r:g} N={fleet} {kind}: {done[-1]['seconds']:.1f} s")
        batching, batching_cpu = run_batching_all(config)
    else:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # for the workers: set before they import numpy
        import multiprocessing

        with ProcessPoolExecutor(config.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_task, config, r, fleet, kind) for r, fleet, kind in tasks]
            batch_future = pool.submit(run_batching_all, config)
            for future in futures:
                done.append(future.result())
                say(f"r={done[-1]['rate']:g} N={done[-1]['fleet']} {done[-1]['kind']}: {done[-1]['seconds']:.1f} s")
            batching, batching_cpu = batch_future.result()
    results = [_merge(config, [t for t in done if (t["rate"], t["fleet"]) == (r, fleet)])
               for r in sorted(config.rates) for fleet in sorted(config.fleets)]
    return {"config": _config_dict(config), "groups": results, "batching": batching,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": sum(t["cpu_seconds"] for t in done) + batching_cpu}


def _task_cost(config: EvalConfig, r: float, fleet: int, kind: str) -> float:
    """Rough relative cost: segment-days of the null (plus its history), plus the spike runs."""
    segments, days = null_size(config, fleet)
    cost = segments * (days + config.history_days / 6.0) * (1.0 + r / 20.0)
    if kind == "independent":
        cost += len(config.shifts) * config.spike_instances * (2.0 + config.history_days / 6.0) * (1.0 + r / 20.0)
    return cost


def _config_dict(config: EvalConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in EvalConfig.__dataclass_fields__}


def single_threaded_blas() -> None:
    """Limit scipy's OpenBLAS to one thread: on busy cores its threads make the small banded ARL solves 3-50x slower."""
    import contextlib
    import ctypes
    import glob

    import scipy
    import scipy.linalg  # loads the library first

    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "libscipy_openblas*.so")
    for path in glob.glob(pattern):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(path).scipy_openblas_set_num_threads(1)
