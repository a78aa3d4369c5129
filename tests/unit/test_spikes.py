"""Detractor-spike detection (processors.spikes): baseline, dual CUSUM, alert lifecycle, evidence, drivers."""

from __future__ import annotations

import random

import orjson
import pytest

from processors.baseline import BaselineSettings
from processors.cusum import cached_threshold, fleet_arl0_answers
from processors.events import AlertEvent
from processors.nps import NpsCounts
from processors.spikes import (
    NOT_PENDING,
    ROW_FIELDS,
    Design,
    DetectionSettings,
    SpikeDetector,
    SpikeState,
    baseline_shares,
    drivers,
)

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 20_416 * DAY  # 2025-11-24T00:00:00Z
SEGMENT, PARENT = "region=EU|channel=app", "region=EU"
SETTINGS = DetectionSettings(segments=100)


def counts(n: int, d: int, p: int = 0) -> NpsCounts:
    return NpsCounts(detractors=d, passives=n - d - p, promoters=p)


def history(days: int = 7, n: int = 10, share: float = 0.2) -> SpikeState:
    """A segment state whose baseline has seen ``days`` days of ``n`` answers a minute at ``share``."""
    state = SpikeState()
    rng = random.Random(days)
    for minute in range(days * 24 * 60):
        d = sum(rng.random() < share for _ in range(n))
        state.baseline.update(T0 - days * DAY + minute * MIN, n, d, SETTINGS.baseline, promoters=(n - d) // 2)
    return state


def feed(detector: SpikeDetector, chain: list[SpikeState], start: int, minutes: int, n: int, share: float,
         rng: random.Random, breakdown: dict | None = None) -> list[AlertEvent]:
    events = []
    for minute in range(minutes):
        d = sum(rng.random() < share for _ in range(n))
        pieces = breakdown or {"touchpoint=web": [n, d]}
        events += detector.observe(SEGMENT, PARENT, start + minute * MIN, counts(n, d, (n - d) // 2), pieces, chain)
    return events


def test_quiet_stream_never_alerts_and_teaches_the_baseline() -> None:
    detector, state = SpikeDetector(SETTINGS), history(days=2)
    before = state.baseline.history
    assert feed(detector, [state], T0, 600, 10, 0.2, random.Random(1)) == []
    assert state.baseline.history > before  # every slice taught the baseline
    assert state.alert is None


def test_warming_up_root_feeds_only_the_baseline() -> None:
    detector, state = SpikeDetector(SETTINGS), SpikeState()
    assert feed(detector, [state], T0, 120, 10, 0.9, random.Random(2)) == []  # < 1000 answers, no parent
    # slices join the baseline an hour after they close: 59 of 120 so far
    assert state.cusums[0].answers == 0 and state.baseline.history == 590 and pending_rows(state) == 61


def test_spike_opens_one_alert_with_onset_evidence_and_drivers() -> None:
    detector, state = SpikeDetector(SETTINGS), history()
    rng = random.Random(3)
    assert feed(detector, [state], T0, 120, 10, 0.2, rng) == []
    spike = T0 + 120 * MIN
    events = []
    for minute in range(20):
        d_web = sum(rng.random() < 0.2 for _ in range(5))
        d_app = sum(rng.random() < 0.9 for _ in range(5))  # the spike is all in touchpoint=checkout
        pieces = {"touchpoint=web": [5, d_web], "touchpoint=checkout": [5, d_app], "region=EU": [10, d_web + d_app]}
        events += detector.observe(SEGMENT, PARENT, spike + minute * MIN, counts(10, d_web + d_app), pieces, [state])
    (opened,) = events
    assert opened.kind == "opened" and opened.segment_id == SEGMENT and opened.parent_segment_id == PARENT
    assert spike < opened.opened_at <= spike + 10 * MIN
    assert spike - 3 * MIN <= opened.onset_at <= spike + 3 * MIN
    assert opened.severity == "sev-1"  # a +35 pp rise
    assert opened.incident_id == opened.alert_id  # no parent alert
    record = opened.to_dict()
    assert record["detractor_share"] > 0.4 and abs(record["baseline_share"] - 0.2) < 0.03
    assert record["share_low"] < record["detractor_share"] < record["share_high"]
    assert record["excess_detractors"] > 10 and record["nps_change"] < -20
    assert record["statistic"] >= record["threshold"] > 5
    # drivers: the excess is in checkout; region is fixed by the segment, web carries no excess
    assert [(x.dimension, x.value) for x in opened.drivers] == [("touchpoint", "checkout")]
    assert orjson.loads(orjson.dumps(record)) == record
    assert state.alert is not None and state.alert.alert_id == opened.alert_id


def test_baseline_is_frozen_while_alerting_and_the_alert_resolves_with_a_head_start() -> None:
    detector, state = SpikeDetector(SETTINGS), history()
    rng = random.Random(4)
    events = feed(detector, [state], T0, 30, 10, 0.6, rng)
    assert [e.kind for e in events] == ["opened"]
    frozen = list(state.baseline.n)
    events = feed(detector, [state], T0 + 30 * MIN, 20, 10, 0.6, rng)
    assert events == [] and state.baseline.n.tolist() == frozen  # no repeats, nothing learnt from the incident
    alert_id = state.alert.alert_id if state.alert else None
    (resolved,) = feed(detector, [state], T0 + 50 * MIN, 120, 10, 0.2, rng)
    assert resolved.kind == "resolved" and resolved.alert_id == alert_id
    # the last hour's upper bound must be back under baseline + 5 pp: well after the spike ended
    assert T0 + 50 * MIN + 30 * MIN <= resolved.at <= T0 + 170 * MIN
    assert state.alert is None
    assert state.baseline.n.tolist() == frozen  # the incident's queued slices were dropped; new ones wait an hour
    feed(detector, [state], resolved.at, 62, 10, 0.2, rng)
    assert state.baseline.n.tolist() != frozen  # learning again


def test_restart_at_half_the_threshold() -> None:
    detector, state = SpikeDetector(SETTINGS), history()
    rng = random.Random(5)
    feed(detector, [state], T0, 30, 10, 0.6, rng)
    assert state.alert is not None
    # hand-check: make the resolution happen on this slice and compare S with h/2 computed independently
    for minute in range(30, 400):
        start = T0 + minute * MIN
        events = detector.observe(SEGMENT, PARENT, start, counts(10, 0), {}, [state])
        if events:
            break
    assert [e.kind for e in events] == ["resolved"]
    q0 = state.baseline.share((start // HOUR) % 24, None, SETTINGS.baseline)
    arl0 = fleet_arl0_answers(state.baseline.traffic_per_window(SETTINGS.baseline), SETTINGS.segments, 1.0)
    for cusum, shift in zip(state.cusums, SETTINGS.shifts, strict=True):
        assert cusum.s == cached_threshold(arl0, q0, q0 + shift) / 2
        assert cusum.last_zero == cusum.answers


def test_a_moderate_rise_is_sev2_then_escalates() -> None:
    detector, state = SpikeDetector(SETTINGS), history(n=30)
    rng = random.Random(6)
    events = feed(detector, [state], T0, 12, 30, 0.33, rng)
    assert [(e.kind, e.severity) for e in events] == [("opened", "sev-2")]
    events = feed(detector, [state], T0 + 12 * MIN, 30, 30, 0.8, rng)
    assert [(e.kind, e.severity) for e in events] == [("updated", "sev-1")]


def test_child_alert_joins_the_open_parent_incident() -> None:
    detector = SpikeDetector(SETTINGS)
    parent, child = history(n=40), history(n=10)
    rng = random.Random(7)
    parent_events = []
    for minute in range(30):
        start = T0 + minute * MIN
        parent_events += detector.observe(PARENT, "all", start, counts(40, sum(rng.random() < 0.7 for _ in range(40))),
                                          {}, [parent])
    assert parent.alert is not None
    (child_opened,) = [e for e in feed(detector, [child, parent], T0 + 30 * MIN, 30, 10, 0.7, rng) if e.kind == "opened"]
    assert child_opened.incident_id == parent.alert.incident_id == parent_events[0].alert_id
    assert child_opened.alert_id != child_opened.incident_id


def test_child_without_history_uses_the_parent_share() -> None:
    parent = history(share=0.3)
    child = SpikeState()
    settings = BaselineSettings()
    child.baseline.update(T0, 10, 1, settings)
    q_child, _ = baseline_shares(5, [child, parent], settings)
    q_parent, _ = baseline_shares(5, [parent], settings)
    assert q_child == q_parent and abs(q_parent - 0.3) < 0.02


def test_state_round_trips_mid_alert() -> None:
    detector = SpikeDetector(SETTINGS)
    state = history()
    feed(detector, [state], T0, 40, 10, 0.6, random.Random(8))
    assert state.alert is not None
    copy = SpikeState.from_list(orjson.loads(orjson.dumps(state.to_list())))
    assert copy.row_list() == state.row_list()  # the rows and their pending marks load as they were
    later = [feed(detector, [s], T0 + 40 * MIN, 150, 10, 0.2, random.Random(9)) for s in (state, copy)]
    assert [e.to_dict() for e in later[0]] == [e.to_dict() for e in later[1]]
    assert later[0] and later[0][-1].kind == "resolved"


def test_design_computes_the_threshold_only_near_it() -> None:
    design = Design(fleet_arl0_answers(10, 1000, 1.0), 0.25, 0.35)
    assert not design.reached(2.0)
    assert design._h is None  # far below the bound: no threshold computed
    assert design.reached(20.0) and design._h is not None and 11 < design.h < 12.5


def test_drivers_rank_by_excess_and_skip_fixed_dimensions() -> None:
    detector, state = SpikeDetector(SETTINGS), history()
    feed(detector, [state], T0, 1, 10, 0.2, random.Random(10))
    evidence = state.evidence[0]
    evidence.values = {"channel=app": [10, 9, 2.0], "touchpoint=a%7Cb": [10, 6, 2.0], "touchpoint=c": [10, 1, 2.0],
                       "region=EU": [20, 15, 4.0]}
    ranked = drivers(SEGMENT, evidence, 3)
    assert [(x.dimension, x.value, x.detractors - x.expected) for x in ranked] == [("touchpoint", "a|b", 4.0)]
    assert drivers("all", evidence, 1)[0].dimension == "region"  # nothing fixed: the largest excess first


def pending_rows(state: SpikeState) -> int:
    return sum(1 for promoters in state.rows[3::ROW_FIELDS] if promoters != NOT_PENDING)


def test_detector_rows_store_as_recent_and_pending_lists_and_load_merged() -> None:
    state = SpikeState()
    state.append_row(T0, 10, 3, 5)
    state.append_row(T0 + MIN, 8, 1, NOT_PENDING)  # claimed by an alert
    stored = orjson.loads(orjson.dumps(state.to_list()))
    assert stored[3] == [[T0, 10, 3], [T0 + MIN, 8, 1]] and stored[5] == [[T0, 10, 3, 5]]
    assert SpikeState.from_list(stored).row_list() == state.row_list()
    stored[3] = [[T0 + MIN, 8, 1]]  # an older release kept a pending row after it left the last hour
    assert SpikeState.from_list(stored).row_list() == state.row_list()
    stored[5] = [[T0, 10, 3]]  # a pending row without its promoters
    with pytest.raises(ValueError, match="needs 4 values"):
        SpikeState.from_list(stored)
