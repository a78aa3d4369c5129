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
from processors.windows import ANSWERS_MASK, pack_breakdown

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


class Evidence:
    """Counts over the slices from an onset on: answers, detractors, promoters and their baseline expectations,
    per driver value ``"dimension=value"`` [answers, detractors, expected detractors], and how many of the
    answers were segmented without customer attributes.

    The per-value counts are one float64 array of three values a driver value (``rows``, exact for counts
    below 2^53) and a dict of each value's row number (``keys``, small ints: shared objects), both ``None``
    until a value comes; a list of three numbers per value took about 150 bytes more. ``values`` builds the
    ``{key: [answers, detractors, expected]}`` dict, as stored."""

    __slots__ = ("detractors", "expected_detractors", "expected_promoters", "keys", "promoters", "responses",
                 "rows", "since", "without_attributes")

    def __init__(self, since: int | None = None, responses: int = 0, detractors: int = 0, promoters: int = 0,
                 expected_detractors: float = 0.0, expected_promoters: float = 0.0,
                 values: Mapping[str, Sequence[float]] | None = None, without_attributes: int = 0) -> None:
        self.since = since
        self.responses = responses
        self.detractors = detractors
        self.promoters = promoters
        self.expected_detractors = expected_detractors
        self.expected_promoters = expected_promoters
        self.keys: dict[str, int] | None = None
        self.rows: array | None = None
        if values:
            self.values = values  # type: ignore[assignment]
        self.without_attributes = without_attributes

    @property
    def values(self) -> dict[str, list[Any]]:
        """Per driver value [answers, detractors, expected detractors], in the order values came."""
        keys, rows = self.keys, self.rows
        if keys is None or rows is None:
            return {}
        out: dict[str, list[Any]] = {}
        for key, row in keys.items():
            at = 3 * row
            out[key] = [int(rows[at]), int(rows[at + 1]), rows[at + 2]]
        return out

    @values.setter
    def values(self, values: Mapping[str, Sequence[float]]) -> None:
        if not values:
            self.keys = self.rows = None
            return
        self.keys = {key: row for row, key in enumerate(values)}
        rows = self.rows = array("d")
        for n, d, expected in values.values():
            rows.extend((float(n), float(d), float(expected)))

    def add(self, start: int, counts: NpsCounts, drivers: Mapping[str, int] | None, q0: float, p0: float,
            without_attributes: int = 0) -> None:
        """Add one slice: its counts and its driver values packed as a :class:`processors.windows.Slice` keeps
        them (:func:`processors.windows.pack_breakdown`)."""
        if self.since is None:
            self.since = start
        n = counts.total
        self.responses += n
        self.without_attributes += without_attributes
        self.detractors += counts.detractors
        self.promoters += counts.promoters
        self.expected_detractors += n * q0
        self.expected_promoters += n * p0
        if not drivers:
            return
        keys, rows = self.keys, self.rows
        if keys is None or rows is None:
            keys, rows = self.keys, self.rows = {}, array("d")
        for key, packed in drivers.items():
            vn, vd = packed & ANSWERS_MASK, packed >> 32
            row = keys.get(key)
            if row is None:
                if len(keys) >= MAX_DRIVER_VALUES:
                    key = key.partition("=")[0] + "=" + OTHER_VALUE
                    row = keys.get(key)
                if row is None:
                    row = keys[key] = len(keys)
                    rows.extend((0.0, 0.0, 0.0))
            at = 3 * row
            rows[at] += vn
            rows[at + 1] += vd
            rows[at + 2] += vn * q0

    def copy(self) -> Evidence:
        twin = Evidence(self.since, self.responses, self.detractors, self.promoters, self.expected_detractors,
                        self.expected_promoters, None, self.without_attributes)
        if self.keys is not None and self.rows is not None:
            twin.keys, twin.rows = dict(self.keys), array("d", self.rows)
        return twin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evidence):
            return NotImplemented
        return self.to_list() == other.to_list() and self.without_attributes == other.without_attributes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Evidence{tuple(self.to_list())!r}"

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
        return cls(since, int(n), int(d), int(p), float(ed), float(ep), values, without)


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
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def pack_rows(rows: Sequence[Sequence[int]]) -> tuple[int, array]:
    """(base, values) for :attr:`SpikeState.rows`: the rows' starts as offsets from the first one's, int32 when
    every value fits (it always does with the default settings), else int64."""
    base = int(rows[0][0]) if rows else 0
    flat = [value for row in rows for value in (int(row[0]) - base, *map(int, row[1:]))]
    fits = all(INT32_MIN <= value <= INT32_MAX for value in flat)
    return base, array("i" if fits else "q", flat)


NO_CUSUMS = [[0.0, 0, 0], [0.0, 0, 0]]  # what a segment's untouched CUSUMs store
NO_EVIDENCE = [[None, 0, 0, 0, 0.0, 0.0, {}], [None, 0, 0, 0, 0.0, 0.0, {}]]  # and their untouched evidence


@dataclass(slots=True, eq=False)
class SpikeState:
    """One segment's detector: baseline, CUSUMs with their evidence since onset, recent slices, open alert.

    ``rows`` holds the slices of the last hour (for the resolve test) and the slices not yet learnt by the
    baseline, each once, in time order: a flat int32 array of ROW_FIELDS values a row (16 bytes; the start as
    milliseconds after ``row_base``), where the promoters field is NOT_PENDING for a slice the baseline will not
    learn (learnt, or claimed by an alert). A row that does not fit moves ``row_base`` to the oldest row kept,
    or widens the array to int64. It is stored as the two lists it replaced: the rows (start, answers,
    detractors) and the pending rows.

    The CUSUMs and their evidence exist only once the detector first reads them (``cusums``, ``evidence``):
    a segment below ``min_history`` never does, and most segments of a large fleet are (the leaves of the
    memory bench stay below it all day); untouched, they store as they did and load back as untouched."""

    baseline: HourlyBaseline = field(default_factory=HourlyBaseline)
    _cusums: list[BernoulliCusum] | None = None
    _evidence: list[Evidence] | None = None
    rows: array = field(default_factory=lambda: array("i"))
    alert: OpenAlert | None = None
    row_base: int = 0  # epoch ms that the starts in ``rows`` count from

    @property
    def cusums(self) -> list[BernoulliCusum]:
        """The two CUSUMs (created on first use)."""
        if self._cusums is None:
            self._cusums = [BernoulliCusum(), BernoulliCusum()]
        return self._cusums

    @property
    def evidence(self) -> list[Evidence]:
        """Each CUSUM's evidence since its onset (created on first use)."""
        if self._evidence is None:
            self._evidence = [Evidence(), Evidence()]
        return self._evidence

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpikeState):
            return NotImplemented
        return self.to_list() == other.to_list()

    __hash__ = None  # type: ignore[assignment]

    def row_list(self) -> list[list[int]]:
        """The rows as [start (epoch ms), answers, detractors, promoters or NOT_PENDING], in time order."""
        values, base = self.rows, self.row_base
        return [[values[i] + base, values[i + 1], values[i + 2], values[i + 3]]
                for i in range(0, len(values), ROW_FIELDS)]

    def append_row(self, start: int, n: int, d: int, promoters: int) -> None:
        """Add the row of a slice starting at ``start`` (after every row kept)."""
        values = self.rows
        if not values:
            self.row_base = start
        offset = start - self.row_base
        if values.typecode == "i" and not (INT32_MIN <= offset <= INT32_MAX and n <= INT32_MAX):
            shift = values[0] if values else 0
            if shift and INT32_MIN <= offset - shift <= INT32_MAX and n <= INT32_MAX:
                for i in range(0, len(values), ROW_FIELDS):
                    values[i] -= shift
                self.row_base += shift
                offset -= shift
            else:
                values = self.rows = array("q", values)
        values.extend((offset, n, d, promoters))

    def to_list(self) -> list[Any]:
        rows = self.row_list()
        recent = [row[:3] for row in rows]
        pending = [row for row in rows if row[3] != NOT_PENDING]
        cusums = ([list(c) for c in NO_CUSUMS] if self._cusums is None  # copies: the caller may change them
                  else [c.to_list() for c in self._cusums])
        evidence = ([[*e[:6], {}] for e in NO_EVIDENCE] if self._evidence is None
                    else [e.to_list() for e in self._evidence])
        return [self.baseline.to_list(), cusums, evidence, recent, self.alert.to_list() if self.alert else None,
                pending]

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
        base, values = pack_rows([merged[start] for start in sorted(merged)])
        return cls(HourlyBaseline.from_list(baseline),
                   None if cusums == NO_CUSUMS else [BernoulliCusum.from_list(c) for c in cusums],
                   None if evidence == NO_EVIDENCE else [Evidence.from_list(e) for e in evidence], values,
                   OpenAlert.from_list(alert) if alert else None, base)

    def learn_until(self, before: int, settings: BaselineSettings) -> None:
        """Move the pending slices that start before ``before`` into the baseline, oldest first."""
        values, base = self.rows, self.row_base
        before -= base
        for i in range(0, len(values), ROW_FIELDS):
            if values[i] >= before:
                break
            if values[i + 3] != NOT_PENDING:
                self.baseline.update(values[i] + base, values[i + 1], values[i + 2], settings,
                                     promoters=values[i + 3])
                values[i + 3] = NOT_PENDING

    def forget_before(self, window_start: int) -> None:
        """Drop the rows before ``window_start`` that are no longer pending, from the front."""
        values = self.rows
        window_start -= self.row_base
        stale = 0
        while stale < len(values) and values[stale] < window_start and values[stale + 3] == NOT_PENDING:
            stale += ROW_FIELDS
        if stale:
            del values[:stale]

    def recent_counts(self, window_start: int) -> tuple[int, int]:
        """(answers, detractors) of the rows from ``window_start`` on."""
        values = self.rows
        window_start -= self.row_base
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


ChainEstimates = tuple[Estimate | None, Estimate | None]  # (detractor, promoter) estimates, before clamping


def chain_estimates(hour: int, chain: Sequence[SpikeState], settings: BaselineSettings) -> ChainEstimates:
    """(detractor, promoter) estimates of ``chain[0]`` for UTC ``hour``, each built on its parent's (``chain[1]``,
    itself built on ``chain[2]``...); (None, None) for an empty chain."""
    q: Estimate | None = None
    p: Estimate | None = None
    for state in reversed(chain):
        q = state.baseline.estimate(hour, q, settings)
        p = state.baseline.estimate(hour, p, settings, promoters=True)
    return q, p


def baseline_shares(hour: int, chain: Sequence[SpikeState], settings: BaselineSettings,
                    parents: ChainEstimates | None = None) -> tuple[float | None, float | None]:
    """(detractor, promoter) baseline shares of ``chain[0]`` for UTC ``hour``, built on its ancestors' estimates
    (``chain[1:]``, or ``parents``: their :func:`chain_estimates`, when the caller already has them)."""
    if parents is None:
        parents = chain_estimates(hour, chain[1:], settings)
    baseline = chain[0].baseline
    q = baseline.estimate(hour, parents[0], settings)
    p = baseline.estimate(hour, parents[1], settings, promoters=True)
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
        return self.observe_packed(segment_id, parent_id, start, counts, pack_breakdown(breakdown), chain,
                                   without_attributes)

    def observe_packed(self, segment_id: str, parent_id: str | None, start: int, counts: NpsCounts,
                       drivers: Mapping[str, int] | None, chain: Sequence[SpikeState], without_attributes: int = 0,
                       parents: ChainEstimates | None = None) -> list[AlertEvent]:
        """:meth:`observe` with the breakdown packed as a :class:`processors.windows.Slice` keeps it
        (:func:`processors.windows.pack_breakdown`), and optionally the ancestors' :func:`chain_estimates` for the
        slice's hour (the same for every segment under them within one minute: a caller may reuse them)."""
        settings = self.settings
        state = chain[0]
        n, d = counts.total, counts.detractors
        end = start + MINUTE_MS
        window_start = start - settings.resolve_window_ms + MINUTE_MS
        state.learn_until(start - settings.baseline_delay_ms, settings.baseline)
        state.forget_before(window_start)
        state.append_row(start, n, d, NOT_PENDING)
        q0, p0 = baseline_shares(hour_of(start), chain, settings.baseline, parents)
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
                state.evidence[k].add(start, counts, drivers, q0, p0, without_attributes)
            alert = state.alert
            if alert is not None:
                alert.evidence.add(start, counts, drivers, q0, p0, without_attributes)
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
            since = evidence.since - state.row_base
            for i in range(len(values) - ROW_FIELDS, -1, -ROW_FIELDS):
                if values[i] < since:
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
