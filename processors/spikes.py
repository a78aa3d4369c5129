"""Detractor-spike detection per segment: an hourly baseline, two Bernoulli CUSUMs and the alert lifecycle.

The detector is fed each segment's closed one-minute slices in event-time order (never empty ones), so what it
decides depends only on the slices' contents. Per slice of n answers, d detractors:

1. q0 = the segment's baseline detractor share for the slice's UTC hour, from its state before the slice
   (:class:`processors.baseline.HourlyBaseline`, shrunk toward the parent segment's share). A segment with
   fewer than ``min_history`` answers only learns: it does not alert on its parent's share, because a segment
   that is simply worse than its parent (phone vs all channels, say +6 pp) would then alert during every
   warm-up (the demo did, 6 times in its first hours). Its parent's share still anchors it by shrinkage.
2. Thresholds h_k = the exact Markov-chain threshold (:func:`processors.cusum.cached_threshold`) for the
   in-control ARL the fleet budget gives this segment: 2 r N 288 / F answers (r = its answers per 5 minutes,
   N = segments watched, F = false alerts per day), for design shares q1_k = q0 + 10 pp and q0 + 25 pp.
   When the segment's own history shows extra variation of the share between five-minute windows
   (:meth:`processors.baseline.HourlyBaseline.rho` > 0), h_k is raised to keep that ARL0 under it
   (:func:`processors.cusum.inflate_threshold`).
3. Both CUSUMs take the slice (:meth:`processors.cusum.BernoulliCusum.update_slice`), also during an alert.
4. An open alert resolves once it is open >= 30 minutes and the Wilson 95% upper bound of the detractor share
   over the last hour's slices is below q0 + 5 pp; both CUSUMs then restart at h_k / 2. An open alert that
   the +25 pp CUSUM crosses, or whose rise since onset reaches 20 pp, becomes sev-1 (``alert.updated``).
   Without an open alert, a CUSUM at or above its threshold opens one (``alert.opened``): the firing CUSUM is
   the +25 pp one if it crossed; the onset is the slice holding the first answer after its last zero.
5. Unless an alert is open after step 4, the slice is queued for the baseline, which takes it once it is an
   hour old (``baseline_delay``). An alert that opens drops the queued slices from its onset on: the
   incident, including the part before it was detected, never becomes normal. (Learning at once let the
   demo's hour-of-day cells learn the first 28 minutes of a +25 pp incident, which halved its rise.)

Evidence is counted per slice from the onset slice on: answers, detractors, promoters, the expected detractors
sum(n q0) and promoters, and the same per driver value (``touchpoint=delivery``...), so an alert says how many
detractors are in excess and which values carry the excess. Alert and event ids derive from content.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from processors.baseline import DEFAULT_BASELINE, BaselineSettings, Estimate, HourlyBaseline, clamp_share, hour_of
from processors.cusum import (
    BernoulliCusum,
    cached_threshold,
    dispersion_factors,
    fleet_arl0_answers,
    inflate_threshold,
    threshold_lower_bound,
)
from processors.events import AlertEvent, Driver, content_id
from processors.nps import NpsCounts, wilson_interval
from processors.segments import parse_segment_id
from processors.timeparse import HOUR_MS, MINUTE_MS

RULE = "detractor-spike.cusum"
SEV1, SEV2 = "sev-1", "sev-2"
MAX_DRIVER_VALUES = 256  # distinct driver values kept per evidence; further ones are counted under "(other)"
OTHER_VALUE = "(other)"
MAX_DESIGN_SHARE = 0.99


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    segments: int = 1000  # segments watched: the false-alert budget is split over them
    false_alerts_per_day: float = 1.0
    shifts: tuple[float, float] = (0.10, 0.25)
    baseline: BaselineSettings = DEFAULT_BASELINE
    sev1_rise: float = 0.20
    resolve_margin: float = 0.05
    resolve_window_ms: int = HOUR_MS
    min_open_ms: int = 30 * MINUTE_MS
    baseline_delay_ms: int = HOUR_MS  # a slice joins the baseline this long after it closed, unless an alert claims it
    max_drivers: int = 3


@dataclass(slots=True)
class Evidence:
    """Counts over the slices from an onset on: answers, detractors, promoters and their baseline expectations,
    per driver value ``"dimension=value"`` [answers, detractors, expected detractors], and how many of the
    answers were segmented without customer attributes."""

    since: int | None = None
    responses: int = 0
    detractors: int = 0
    promoters: int = 0
    expected_detractors: float = 0.0
    expected_promoters: float = 0.0
    values: dict[str, list[float]] = field(default_factory=dict)
    without_attributes: int = 0

    def add(self, start: int, counts: NpsCounts, breakdown: Mapping[str, Sequence[int]], q0: float, p0: float,
            without_attributes: int = 0) -> None:
        if self.since is None:
            self.since = start
        n = counts.total
        self.responses += n
        self.without_attributes += without_attributes
        self.detractors += counts.detractors
        self.promoters += counts.promoters
        self.expected_detractors += n * q0
        self.expected_promoters += n * p0
        values = self.values
        for key, (vn, vd) in breakdown.items():
            row = values.get(key)
            if row is None:
                if len(values) >= MAX_DRIVER_VALUES:
                    key = key.partition("=")[0] + "=" + OTHER_VALUE
                row = values.setdefault(key, [0, 0, 0.0])
            row[0] += vn
            row[1] += vd
            row[2] += vn * q0

    def copy(self) -> Evidence:
        return Evidence(self.since, self.responses, self.detractors, self.promoters, self.expected_detractors,
                        self.expected_promoters, {key: list(row) for key, row in self.values.items()},
                        self.without_attributes)

    @property
    def rise(self) -> float:
        """Detractor share minus its baseline expectation (0 without answers)."""
        if not self.responses:
            return 0.0
        return self.detractors / self.responses - self.expected_detractors / self.responses

    def to_list(self) -> list[Any]:
        data = [self.since, self.responses, self.detractors, self.promoters, self.expected_detractors,
                self.expected_promoters, self.values]
        if self.without_attributes:  # only then: state without the count stays as it was (and loads in older code)
            data.append(self.without_attributes)
        return data

    @classmethod
    def from_list(cls, data: list[Any]) -> Evidence:
        since, n, d, p, ed, ep, values = data[:7]
        without = int(data[7]) if len(data) > 7 else 0  # state from before the count: 0
        return cls(since, int(n), int(d), int(p), float(ed), float(ep), {k: list(v) for k, v in values.items()},
                   without)


@dataclass(slots=True)
class OpenAlert:
    alert_id: str
    incident_id: str
    opened_at: int  # end of the slice that fired
    design: int  # index of the firing CUSUM in DetectionSettings.shifts
    severity: str
    statistic: float
    threshold: float
    evidence: Evidence

    def to_list(self) -> list[Any]:
        return [self.alert_id, self.incident_id, self.opened_at, self.design, self.severity, self.statistic,
                self.threshold, self.evidence.to_list()]

    @classmethod
    def from_list(cls, data: list[Any]) -> OpenAlert:
        alert_id, incident_id, opened_at, design, severity, statistic, threshold, evidence = data
        return cls(alert_id, incident_id, int(opened_at), int(design), severity, float(statistic), float(threshold),
                   Evidence.from_list(evidence))


ROW_FIELDS = 4  # per row of SpikeState.rows: slice start, answers, detractors, promoters (NOT_PENDING: learnt)
NOT_PENDING = -1


@dataclass(slots=True)
class SpikeState:
    """One segment's detector: baseline, CUSUMs with their evidence since onset, recent slices, open alert.

    ``rows`` holds the slices of the last hour (for the resolve test) and the slices not yet learnt by the
    baseline, each once, in time order: a flat int64 array of ROW_FIELDS values a row (32 bytes), where the
    promoters field is NOT_PENDING for a slice the baseline will not learn (learnt, or claimed by an alert). It
    is stored as the two lists it replaced: the rows (start, answers, detractors) and the pending rows."""

    baseline: HourlyBaseline = field(default_factory=HourlyBaseline)
    cusums: list[BernoulliCusum] = field(default_factory=lambda: [BernoulliCusum(), BernoulliCusum()])
    evidence: list[Evidence] = field(default_factory=lambda: [Evidence(), Evidence()])
    rows: array = field(default_factory=lambda: array("q"))
    alert: OpenAlert | None = None

    def to_list(self) -> list[Any]:
        values = self.rows
        recent = [values[i:i + 3].tolist() for i in range(0, len(values), ROW_FIELDS)]
        pending = [values[i:i + ROW_FIELDS].tolist() for i in range(0, len(values), ROW_FIELDS)
                   if values[i + 3] != NOT_PENDING]
        return [self.baseline.to_list(), [c.to_list() for c in self.cusums], [e.to_list() for e in self.evidence],
                recent, self.alert.to_list() if self.alert else None, pending]

    @classmethod
    def from_list(cls, data: list[Any]) -> SpikeState:
        baseline, cusums, evidence, recent, alert = data[:5]
        pending = data[5] if len(data) > 5 else []
        merged: dict[int, list[int]] = {}
        for row in recent:
            if len(row) != 3:
                raise ValueError(f"a recent detector row needs 3 values, got {len(row)}")
            merged[int(row[0])] = [int(row[0]), int(row[1]), int(row[2]), NOT_PENDING]
        for row in pending:
            if len(row) != ROW_FIELDS:
                raise ValueError(f"a pending detector row needs {ROW_FIELDS} values, got {len(row)}")
            merged[int(row[0])] = [int(x) for x in row]
        values = array("q")
        for start in sorted(merged):
            values.extend(merged[start])
        return cls(HourlyBaseline.from_list(baseline), [BernoulliCusum.from_list(c) for c in cusums],
                   [Evidence.from_list(e) for e in evidence], values, OpenAlert.from_list(alert) if alert else None)

    def learn_until(self, before: int, settings: BaselineSettings) -> None:
        """Move the pending slices that start before ``before`` into the baseline, oldest first."""
        values = self.rows
        for i in range(0, len(values), ROW_FIELDS):
            if values[i] >= before:
                break
            if values[i + 3] != NOT_PENDING:
                self.baseline.update(values[i], values[i + 1], values[i + 2], settings, promoters=values[i + 3])
                values[i + 3] = NOT_PENDING

    def forget_before(self, window_start: int) -> None:
        """Drop the rows before ``window_start`` that are no longer pending, from the front."""
        values = self.rows
        stale = 0
        while stale < len(values) and values[stale] < window_start and values[stale + 3] == NOT_PENDING:
            stale += ROW_FIELDS
        if stale:
            del values[:stale]

    def recent_counts(self, window_start: int) -> tuple[int, int]:
        """(answers, detractors) of the rows from ``window_start`` on."""
        values = self.rows
        n = d = 0
        for i in range(len(values) - ROW_FIELDS, -1, -ROW_FIELDS):
            if values[i] < window_start:
                break
            n += values[i + 1]
            d += values[i + 2]
        return n, d


class Design:
    """One CUSUM's design for a slice: shares q0 -> q1 and the threshold h for the in-control ARL, computed
    only when asked (exact thresholds cost milliseconds; a CUSUM below a cheap lower bound needs none).
    r (answers per window) and rho (between-window dispersion, 0: none) raise h for an overdispersed segment."""

    __slots__ = ("_h", "arl0", "q0", "q1", "r", "rho")

    def __init__(self, arl0: float, q0: float, q1: float, r: float = 0.0, rho: float = 0.0) -> None:
        self.arl0, self.q0, self.q1, self.r, self.rho = arl0, q0, q1, r, rho
        self._h: float | None = None

    @property
    def h(self) -> float:
        if self._h is None:
            h = cached_threshold(self.arl0, self.q0, self.q1)
            factors = dispersion_factors(self.q0, self.q1, self.r, self.rho)
            self._h = h if factors is None else inflate_threshold(h, *factors)
        return self._h

    def reached(self, s: float) -> bool:
        """S >= h, without computing h while S is below its lower bound."""
        if self._h is None and s < threshold_lower_bound(self.arl0, self.q0, self.q1):
            return False
        return s >= self.h


def baseline_shares(hour: int, chain: Sequence[SpikeState], settings: BaselineSettings) -> tuple[float | None, float | None]:
    """(detractor, promoter) baseline shares of ``chain[0]`` for UTC ``hour``, each built on its parent's
    estimate (``chain[1]``, itself built on ``chain[2]``...)."""
    q: Estimate | None = None
    p: Estimate | None = None
    for state in reversed(chain):
        q = state.baseline.estimate(hour, q, settings)
        p = state.baseline.estimate(hour, p, settings, promoters=True)
    return (None if q is None else clamp_share(q[0])), (None if p is None else clamp_share(p[0]))


class SpikeDetector:
    def __init__(self, settings: DetectionSettings) -> None:
        self.settings = settings

    def designs(self, state: SpikeState, q0: float) -> list[Design] | None:
        """Per CUSUM its design share and threshold for the segment's traffic; None before any traffic."""
        settings = self.settings
        r = state.baseline.traffic_per_window(settings.baseline)
        if r <= 0.0:
            return None
        arl0 = fleet_arl0_answers(r, settings.segments, settings.false_alerts_per_day,
                                  cusums_per_segment=len(settings.shifts))
        rho = state.baseline.rho(settings.baseline)
        return [Design(arl0, q0, min(q0 + shift, MAX_DESIGN_SHARE), r, rho) for shift in settings.shifts]

    def observe(self, segment_id: str, parent_id: str | None, start: int, counts: NpsCounts,
                breakdown: Mapping[str, Sequence[int]], chain: Sequence[SpikeState],
                without_attributes: int = 0) -> list[AlertEvent]:
        """Feed one closed slice (n > 0, ``without_attributes`` of its answers segmented without customer
        attributes) to ``chain[0]``, the segment's state; ``chain[1:]`` are its ancestors' states as of the end
        of the previous slice. Returns the alert events it caused."""
        settings = self.settings
        state = chain[0]
        n, d = counts.total, counts.detractors
        end = start + MINUTE_MS
        window_start = start - settings.resolve_window_ms + MINUTE_MS
        state.learn_until(start - settings.baseline_delay_ms, settings.baseline)
        state.forget_before(window_start)
        state.rows.extend((start, n, d, NOT_PENDING))
        q0, p0 = baseline_shares(hour_of(start), chain, settings.baseline)
        warming_up = q0 is None or state.baseline.history < settings.baseline.min_history
        designs = None if warming_up else self.designs(state, q0)
        events: list[AlertEvent] = []
        if q0 is not None and designs is not None:
            assert p0 is not None
            for k, (cusum, design) in enumerate(zip(state.cusums, designs, strict=True)):
                last_zero = cusum.last_zero
                cusum.update_slice(d, n, q0, design.q1)
                if cusum.last_zero != last_zero:  # S hit 0 in this slice: the onset moves
                    state.evidence[k] = Evidence()
                    if cusum.last_zero == cusum.answers:  # ... past this slice
                        continue
                state.evidence[k].add(start, counts, breakdown, q0, p0, without_attributes)
            alert = state.alert
            if alert is not None:
                alert.evidence.add(start, counts, breakdown, q0, p0, without_attributes)
                events.extend(self._while_open(segment_id, parent_id, state, alert, end, q0, designs, chain))
            else:
                fired = [k for k, (cusum, design) in enumerate(zip(state.cusums, designs, strict=True))
                         if design.reached(cusum.s)]
                if fired:
                    events.append(self._open(segment_id, parent_id, state, fired[-1], end, designs, chain))
        if state.alert is None:  # pending: the baseline learns it later, unless an alert claims it first
            state.rows[-1] = counts.promoters
        return events

    def _open(self, segment_id: str, parent_id: str | None, state: SpikeState, design: int, end: int,
              designs: list[Design], chain: Sequence[SpikeState]) -> AlertEvent:
        evidence = state.evidence[design].copy()
        if evidence.since is not None:  # the incident began before it was detected: keep it out of the baseline
            values = state.rows  # in time order: the rows from the onset on are no longer pending
            for i in range(len(values) - ROW_FIELDS, -1, -ROW_FIELDS):
                if values[i] < evidence.since:
                    break
                values[i + 3] = NOT_PENDING
        sev1 = design == len(self.settings.shifts) - 1 or evidence.rise >= self.settings.sev1_rise
        alert_id = content_id("alert", segment_id, end, RULE)
        incident = open_ancestor_incident(chain) or alert_id
        state.alert = OpenAlert(alert_id, incident, end, design, SEV1 if sev1 else SEV2, state.cusums[design].s,
                                designs[design].h, evidence)
        return self._event("opened", segment_id, parent_id, state.alert, end)

    def _while_open(self, segment_id: str, parent_id: str | None, state: SpikeState, alert: OpenAlert, end: int,
                    q0: float, designs: list[Design], chain: Sequence[SpikeState]) -> list[AlertEvent]:
        settings = self.settings
        n, d = state.recent_counts(end - settings.resolve_window_ms)
        upper = wilson_interval(d, n)[1] if n else 1.0
        if end - alert.opened_at >= settings.min_open_ms and upper < q0 + settings.resolve_margin:
            for k, (cusum, design) in enumerate(zip(state.cusums, designs, strict=True)):
                cusum.restart(design.h / 2)
                state.evidence[k] = Evidence()
            state.alert = None
            return [self._event("resolved", segment_id, parent_id, alert, end)]
        changed = False
        top = len(designs) - 1
        if alert.severity != SEV1 and (designs[top].reached(state.cusums[top].s) or alert.evidence.rise >= settings.sev1_rise):
            alert.severity = SEV1
            changed = True
        parent_incident = open_ancestor_incident(chain)
        if parent_incident is not None and alert.incident_id == alert.alert_id and parent_incident != alert.alert_id:
            alert.incident_id = parent_incident  # a parent alert opened since: roll up into its incident
            changed = True
        return [self._event("updated", segment_id, parent_id, alert, end)] if changed else []

    def _event(self, kind: str, segment_id: str, parent_id: str | None, alert: OpenAlert, at: int) -> AlertEvent:
        evidence = alert.evidence
        return AlertEvent(
            kind=kind, alert_id=alert.alert_id, incident_id=alert.incident_id, segment_id=segment_id,
            parent_segment_id=parent_id, rule=RULE, severity=alert.severity,
            design_shift_pp=round(100 * self.settings.shifts[alert.design]), at=at, opened_at=alert.opened_at,
            onset_at=evidence.since if evidence.since is not None else alert.opened_at - MINUTE_MS,
            responses=evidence.responses, detractors=evidence.detractors, promoters=evidence.promoters,
            expected_detractors=evidence.expected_detractors, expected_promoters=evidence.expected_promoters,
            statistic=alert.statistic, threshold=alert.threshold,
            drivers=drivers(segment_id, evidence, self.settings.max_drivers),
            answers_without_attributes=evidence.without_attributes,
        )


def open_ancestor_incident(chain: Sequence[SpikeState]) -> str | None:
    """The incident of the nearest ancestor (``chain[1:]``) with an open alert, if any."""
    return next((state.alert.incident_id for state in chain[1:] if state.alert is not None), None)


def drivers(segment_id: str, evidence: Evidence, limit: int) -> tuple[Driver, ...]:
    """The driver values with the largest detractor excess (observed - expected), positive ones only, leaving
    out the dimensions the segment itself fixes."""
    fixed = {name for name, _ in parse_segment_id(segment_id)}
    ranked = []
    for key, (n, d, expected) in evidence.values.items():
        dimension, _, value = key.partition("=")
        value = unquote(value)
        excess = d - expected
        if dimension not in fixed and excess > 0.0 and not math.isclose(excess, 0.0, abs_tol=1e-9):
            ranked.append((-excess, key, Driver(dimension, value, int(n), int(d), expected)))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return tuple(driver for _, _, driver in ranked[:limit])
